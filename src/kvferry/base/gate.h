#pragma once
// Gate: orderly shutdown (after seastar's gate). Work enters the gate while it
// is open; Close() stops new entries and waits, bounded, for work inside to leave.
// Thread-safe.

#include <cstdint>

#include "kvferry/base/clock.h"
#include "kvferry/base/mutex.h"
#include "kvferry/base/status.h"

namespace kvferry {

class Gate {
 public:
  Gate() = default;
  Gate(const Gate&) = delete;
  Gate& operator=(const Gate&) = delete;

  // Returns false once the gate is closed; on true the caller must Leave().
  bool TryEnter();
  void Leave();
  // Closes the gate and waits until everyone inside left. DeadlineExceeded if
  // the deadline passes first (the gate stays closed).
  Status Close(const Deadline& deadline);
  bool closed() const;
  int64_t inside() const;

  // RAII holder: entered() tells whether the gate let us in.
  class Holder {
   public:
    explicit Holder(Gate& gate) : gate_(gate), entered_(gate.TryEnter()) {}
    ~Holder() {
      if (entered_) gate_.Leave();
    }
    Holder(const Holder&) = delete;
    Holder& operator=(const Holder&) = delete;
    bool entered() const { return entered_; }

   private:
    Gate& gate_;
    bool entered_;
  };

 private:
  mutable Mutex mu_;
  CondVar cv_;
  bool closed_ KVF_GUARDED_BY(mu_) = false;
  int64_t inside_ KVF_GUARDED_BY(mu_) = 0;
};

}  // namespace kvferry
