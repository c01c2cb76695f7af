#pragma once
// An annotated mutex for clang's -Wthread-safety: every field a mutex protects
// is marked KVF_GUARDED_BY(mu_). On g++ the annotations compile to nothing.

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <shared_mutex>

#include "kvferry/base/clock.h"

#if defined(__clang__)
#define KVF_THREAD_ANNOTATION_(x) __attribute__((x))
#else
#define KVF_THREAD_ANNOTATION_(x)
#endif
#define KVF_CAPABILITY(x) KVF_THREAD_ANNOTATION_(capability(x))
#define KVF_SCOPED_CAPABILITY KVF_THREAD_ANNOTATION_(scoped_lockable)
#define KVF_GUARDED_BY(x) KVF_THREAD_ANNOTATION_(guarded_by(x))
#define KVF_PT_GUARDED_BY(x) KVF_THREAD_ANNOTATION_(pt_guarded_by(x))
#define KVF_REQUIRES(...) KVF_THREAD_ANNOTATION_(requires_capability(__VA_ARGS__))
#define KVF_REQUIRES_SHARED(...) KVF_THREAD_ANNOTATION_(requires_shared_capability(__VA_ARGS__))
#define KVF_ACQUIRE(...) KVF_THREAD_ANNOTATION_(acquire_capability(__VA_ARGS__))
#define KVF_ACQUIRE_SHARED(...) KVF_THREAD_ANNOTATION_(acquire_shared_capability(__VA_ARGS__))
#define KVF_RELEASE(...) KVF_THREAD_ANNOTATION_(release_capability(__VA_ARGS__))
#define KVF_RELEASE_SHARED(...) KVF_THREAD_ANNOTATION_(release_shared_capability(__VA_ARGS__))
#define KVF_EXCLUDES(...) KVF_THREAD_ANNOTATION_(locks_excluded(__VA_ARGS__))
#define KVF_RETURN_CAPABILITY(x) KVF_THREAD_ANNOTATION_(lock_returned(x))
#define KVF_NO_THREAD_SAFETY_ANALYSIS KVF_THREAD_ANNOTATION_(no_thread_safety_analysis)

namespace kvferry {

class KVF_CAPABILITY("mutex") Mutex {
 public:
  void Lock() KVF_ACQUIRE() { mu_.lock(); }
  void Unlock() KVF_RELEASE() { mu_.unlock(); }
  std::mutex& native() { return mu_; }

 private:
  std::mutex mu_;
};

class KVF_SCOPED_CAPABILITY MutexLock {
 public:
  explicit MutexLock(Mutex& mu) KVF_ACQUIRE(mu) : mu_(mu) { mu_.Lock(); }
  ~MutexLock() KVF_RELEASE() { mu_.Unlock(); }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

 private:
  Mutex& mu_;
};

// Reader/writer lock.
class KVF_CAPABILITY("shared_mutex") SharedMutex {
 public:
  void Lock() KVF_ACQUIRE() { mu_.lock(); }
  void Unlock() KVF_RELEASE() { mu_.unlock(); }
  void LockShared() KVF_ACQUIRE_SHARED() { mu_.lock_shared(); }
  void UnlockShared() KVF_RELEASE_SHARED() { mu_.unlock_shared(); }

 private:
  std::shared_mutex mu_;
};

class KVF_SCOPED_CAPABILITY WriterLock {
 public:
  explicit WriterLock(SharedMutex& mu) KVF_ACQUIRE(mu) : mu_(mu) { mu_.Lock(); }
  ~WriterLock() KVF_RELEASE() { mu_.Unlock(); }
  WriterLock(const WriterLock&) = delete;
  WriterLock& operator=(const WriterLock&) = delete;

 private:
  SharedMutex& mu_;
};

class KVF_SCOPED_CAPABILITY ReaderLock {
 public:
  explicit ReaderLock(SharedMutex& mu) KVF_ACQUIRE_SHARED(mu) : mu_(mu) { mu_.LockShared(); }
  ~ReaderLock() KVF_RELEASE() { mu_.UnlockShared(); }
  ReaderLock(const ReaderLock&) = delete;
  ReaderLock& operator=(const ReaderLock&) = delete;

 private:
  SharedMutex& mu_;
};

// Condition variable bound to a Mutex. Waits are on the real steady clock;
// callers with a FakeClock deadline should use short waits and re-check.
class CondVar {
 public:
  // REQUIRES: mu held. Returns false if the deadline passed before a notify.
  bool WaitUntil(Mutex& mu, const Deadline& deadline) KVF_REQUIRES(mu) {
    std::unique_lock<std::mutex> l(mu.native(), std::adopt_lock);
    bool notified = true;
    if (deadline.infinite()) {
      cv_.wait(l);
    } else if (deadline.clock() == Clock::Real()) {
      notified = cv_.wait_until(l, deadline.at()) == std::cv_status::no_timeout;
    } else {
      // Fake clock: poll in small real-time steps so tests stay fast.
      cv_.wait_for(l, std::chrono::milliseconds(1));
      notified = !deadline.Expired();
    }
    l.release();
    return notified;
  }
  void Wait(Mutex& mu) KVF_REQUIRES(mu) { WaitUntil(mu, Deadline::Infinite()); }
  void NotifyOne() { cv_.notify_one(); }
  void NotifyAll() { cv_.notify_all(); }

 private:
  std::condition_variable cv_;
};

}  // namespace kvferry
