# Build helpers shared by every component: warnings, sanitizers, and the
# kvferry_cc_library / kvferry_cc_test / kvferry_cc_fuzz functions.

find_program(KVFERRY_CCACHE ccache)
if(KVFERRY_CCACHE AND NOT CMAKE_CXX_COMPILER_LAUNCHER)
  set(CMAKE_CXX_COMPILER_LAUNCHER "${KVFERRY_CCACHE}")
endif()

# KVFERRY_FAST_BUILD: a cold build of the `kvferry` binary in less CPU time, for `scripts/demo`:
# unity groups for apps/ (apps/CMakeLists.txt). 14 of its 16 files include the header-only CLI11
# 2.1, whose inline App/Option code every one of them compiled again (a third to half of each
# file's time); three groups compile it three times instead of fourteen (apps/: ~260 s of CPU
# time -> ~60 s). A precompiled header for http/'s Boost.Beast/Asio was tried and dropped: making
# the .gch cost 20 s of CPU time, more than the two files save by not parsing Beast (8-10 s each).
# The libraries too (kvferry_cc_library: batches of 8 files), except http, connector and the
# server frontend, whose files share helper names in anonymous namespaces: the demo's cold build
# went from 236 s to ~200 s on 2 cores. Off by default: a unity group recompiles whole when one
# of its files changes, and the release preset (the one developers rebuild) leans on incremental
# builds and ccache. The demo, fuzz, asan and tsan presets turn it on: CI builds the last three
# from a cold cache on every run (asan: 761 s -> 587 s on the 2-core Zen 3 VM), and a name clash
# between two files of one library breaks CI, not only the demo.
option(KVFERRY_FAST_BUILD "Unity groups for apps/ and the libraries (demo, fuzz, asan and tsan presets)" OFF)

set(KVFERRY_WARNINGS -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers)
if(CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
  list(APPEND KVFERRY_WARNINGS -Wthread-safety)
endif()

if(KVFERRY_SANITIZE STREQUAL "asan")
  add_compile_options(-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined)
  add_link_options(-fsanitize=address,undefined)
elseif(KVFERRY_SANITIZE STREQUAL "tsan")
  add_compile_options(-fsanitize=thread -fno-omit-frame-pointer $<$<CXX_COMPILER_ID:GNU>:-Wno-tsan>)
  add_link_options(-fsanitize=thread)
elseif(NOT KVFERRY_SANITIZE STREQUAL "")
  message(FATAL_ERROR "KVFERRY_SANITIZE must be '', 'asan' or 'tsan', not '${KVFERRY_SANITIZE}'")
endif()

if(KVFERRY_FUZZ)
  if(NOT CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
    message(FATAL_ERROR "KVFERRY_FUZZ needs clang (use the 'fuzz' preset)")
  endif()
  add_compile_options(-fsanitize=fuzzer-no-link,address,undefined -fno-omit-frame-pointer)
  add_link_options(-fsanitize=address,undefined)
endif()

# kvferry_cc_library(NAME SRCS ... DEPS ...)
function(kvferry_cc_library)
  cmake_parse_arguments(A "NO_UNITY" "NAME" "SRCS;DEPS" ${ARGN})
  add_library(${A_NAME} STATIC ${A_SRCS})
  target_include_directories(${A_NAME} PUBLIC ${PROJECT_SOURCE_DIR}/src)
  target_compile_options(${A_NAME} PRIVATE ${KVFERRY_WARNINGS})
  target_link_libraries(${A_NAME} PUBLIC ${A_DEPS})
  if(KVFERRY_FAST_BUILD AND NOT A_NO_UNITY)
    set_target_properties(${A_NAME} PROPERTIES UNITY_BUILD ON UNITY_BUILD_BATCH_SIZE 8)
    # GCC takes a .cc included by the unity file for a header and warns about its
    # anonymous-namespace types in classes declared elsewhere.
    target_compile_options(${A_NAME} PRIVATE $<$<CXX_COMPILER_ID:GNU>:-Wno-subobject-linkage>)
  endif()
endfunction()

# kvferry_cc_test(NAME SRCS ... DEPS ... [LABELS ...])
# Unit tests: gtest binaries discovered test-by-test at ctest time.
function(kvferry_cc_test)
  if(NOT KVFERRY_BUILD_TESTS OR KVFERRY_FUZZ)
    return()
  endif()
  cmake_parse_arguments(A "" "NAME;TIMEOUT" "SRCS;DEPS;LABELS" ${ARGN})
  if(NOT A_TIMEOUT)
    set(A_TIMEOUT 120)
  endif()
  add_executable(${A_NAME} ${A_SRCS})
  target_compile_options(${A_NAME} PRIVATE ${KVFERRY_WARNINGS})
  target_link_libraries(${A_NAME} PRIVATE ${A_DEPS} GTest::gtest GTest::gtest_main GTest::gmock)
  gtest_discover_tests(${A_NAME} DISCOVERY_MODE PRE_TEST
    PROPERTIES TIMEOUT ${A_TIMEOUT} LABELS "${A_LABELS}")
endfunction()

# kvferry_cc_fuzz(NAME SRCS ... DEPS ...): a libFuzzer target, built only with KVFERRY_FUZZ.
set_property(GLOBAL PROPERTY KVFERRY_FUZZ_TARGETS "")
function(kvferry_cc_fuzz)
  if(NOT KVFERRY_FUZZ)
    return()
  endif()
  cmake_parse_arguments(A "" "NAME" "SRCS;DEPS" ${ARGN})
  add_executable(${A_NAME} ${A_SRCS})
  target_link_libraries(${A_NAME} PRIVATE ${A_DEPS})
  target_link_options(${A_NAME} PRIVATE -fsanitize=fuzzer)
  set_property(GLOBAL APPEND PROPERTY KVFERRY_FUZZ_TARGETS ${A_NAME})
endfunction()
