#pragma once
// kvferry/connector: the MooncakeConnector (PROTOCOL.md §1, §3, §4).
// So far: --kv-transfer-config and VLLM_MOONCAKE_* parsing (config.h), the
// bootstrap server and its clients (bootstrap.h). The side-channel codec
// (side_channel.h) is private; the connector that drives prefill/decode pairs
// lands with the disaggregation work.
// Threading: every type documents its own; BootstrapRegistry/Server are thread-safe.

#include "kvferry/connector/bootstrap.h"
#include "kvferry/connector/config.h"
