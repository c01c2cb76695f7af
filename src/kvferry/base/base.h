#pragma once
// kvferry/base: the vocabulary every component shares.
//  - Status / StatusOr<T> and KVF_RETURN_IF_ERROR / KVF_ASSIGN_OR_RETURN (status.h)
//  - Clock, FakeClock, Deadline (clock.h); Mutex, CondVar, thread annotations (mutex.h)
//  - Gate for shutdown (gate.h); ThreadPool (thread_pool.h); logging (log.h); byte sizes (bytes.h)
// Threading: every type documents its own; all are safe to share unless noted.
// This is the only header other components include from base.

#include "kvferry/base/bytes.h"
#include "kvferry/base/clock.h"
#include "kvferry/base/gate.h"
#include "kvferry/base/log.h"
#include "kvferry/base/mutex.h"
#include "kvferry/base/status.h"
#include "kvferry/base/thread_pool.h"

namespace kvferry {
// Version of the kvferry project, "MAJOR.MINOR.PATCH".
const char* Version();
}  // namespace kvferry
