#include "kvferry/base/base.h"

#ifndef KVFERRY_VERSION
#define KVFERRY_VERSION "0.0.0"
#endif

namespace kvferry {
const char* Version() { return KVFERRY_VERSION; }
}  // namespace kvferry
