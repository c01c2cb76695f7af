#pragma once
// The side-channel messages (PROTOCOL.md §4): msgpack maps keyed by field name,
// as vLLM's msgspec structs encode them. Decoding never trusts the peer: wrong
// types, absurd sizes and missing required fields are InvalidArgument.

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "kvferry/base/base.h"

namespace kvferry::connector {

struct ReqBlocks {
  std::string transfer_id;
  std::vector<std::vector<int64_t>> groups;  // block ids per KV cache group
};

struct XferMetadata {  // MooncakeXferMetadata, decoder → prefiller
  std::string remote_hostname;
  int64_t remote_port = 0;
  int64_t remote_tp_size = 1;
  int64_t remote_tp_rank = 0;
  int64_t remote_pp_size = 1;
  std::map<std::string, ReqBlocks> req_blocks;  // d_req_id → blocks
  std::vector<uint64_t> kv_caches_base_addr;
  std::vector<int64_t> block_lens;
  std::vector<int64_t> kv_block_lens;
  std::vector<std::string> registered_layer_names;
  std::vector<int64_t> registered_layer_indices;
  std::vector<int64_t> registered_group_indices;
  // kvferry's addition, absent from vLLM's struct (msgspec ignores unknown fields, and so does
  // kvferry): model::Model::Fingerprint() of the decoder's weights. Sent when known; a kvferry
  // prefiller that serves other weights refuses the pull. Empty: not sent / not checked.
  std::string kvferry_model;
};

enum class XferStatus : int { kFinish = 0, kContinue = 1, kError = 2 };

struct XferResponse {  // MooncakeXferResponse, prefiller → decoder
  XferStatus status = XferStatus::kFinish;
  std::vector<std::string> ok_reqs;
  std::vector<std::string> err_reqs;
  std::string err_msg;
};

// Limits on what a peer may send (a bound on memory per message).
inline constexpr size_t kMaxSideChannelMessage = 64u << 20;
inline constexpr size_t kMaxRequestsPerMessage = 65536;
inline constexpr size_t kMaxBlocksPerRequest = 1u << 20;

std::string EncodeXferMetadata(const XferMetadata& m);
StatusOr<XferMetadata> DecodeXferMetadata(std::string_view bytes);
std::string EncodeXferResponse(const XferResponse& r);
StatusOr<XferResponse> DecodeXferResponse(std::string_view bytes);

}  // namespace kvferry::connector
