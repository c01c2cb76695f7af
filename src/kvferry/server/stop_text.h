#pragma once
// Stop strings over streamed text (private to server/). Text arrives piece by piece from the
// incremental detokenizer; StopMatcher releases it as soon as it cannot be the start of a stop
// string, holds back a tail that might still become one, and reports the first stop string.
// Not thread-safe: one per choice.

#include <string>
#include <string_view>
#include <vector>

namespace kvferry::server {

class StopMatcher {
 public:
  // `stops` must not contain empty strings. `include_stop` keeps the matched stop string in the
  // released text (vLLM's include_stop_str_in_output).
  StopMatcher(std::vector<std::string> stops, bool include_stop);

  // Appends `text`; returns what may be released now. After a stop string matched, returns the
  // text before it (plus the stop string when include_stop) and stopped() turns true; later
  // calls return "".
  std::string Push(std::string_view text);
  // Releases whatever is held back (the stream ended without a stop string).
  std::string Flush();
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stops_;
  bool include_stop_;
  bool stopped_ = false;
  std::string held_;  // released-later text: a suffix that is a prefix of some stop string
};

}  // namespace kvferry::server
