// libFuzzer: Encode on arbitrary bytes, and the decode/streaming invariants:
// Decode(ids) is valid UTF-8, the incremental detokenizer's pieces are valid UTF-8 and add up to
// Decode(ids), and valid NFC input round-trips.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>

#include "kvferry/tokenizer/fuzz_util.h"
#include "kvferry/tokenizer/tokenizer.h"
#include "kvferry/tokenizer/unicode.h"

using namespace kvferry::tokenizer;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const Tokenizer* tok = [] {
    auto t = Tokenizer::FromJson(fuzz::SmallTokenizerJson());
    if (!t.ok()) {
      std::fprintf(stderr, "%s\n", t.status().ToString().c_str());
      std::abort();
    }
    return std::move(t).value().release();
  }();
  std::string_view text(reinterpret_cast<const char*>(data), size);
  std::vector<int32_t> ids = tok->Encode(text, /*add_special_tokens=*/true);
  std::string decoded = tok->Decode(ids);
  if (!IsValidUtf8(decoded)) std::abort();
  IncrementalDetokenizer detok(*tok);
  std::string streamed;
  for (int32_t id : ids) {
    std::string piece = detok.Add(id);
    if (!IsValidUtf8(piece)) std::abort();
    streamed += piece;
  }
  streamed += detok.Finish();
  if (streamed != decoded) std::abort();
  std::string nfc;
  if (IsValidUtf8(text) && !Normalize(NormalForm::kNfc, text, &nfc) && decoded != text) {
    // Text that NFC leaves alone and that contains no lstrip/rstrip token must round-trip.
    if (text.find("<tool>") == std::string_view::npos) std::abort();
  }
  return 0;
}
