#include "kvferry/connector/side_channel.h"

#include <fmt/format.h>

#include <nlohmann/json.hpp>

namespace kvferry::connector {
namespace {

using json = nlohmann::json;

StatusOr<json> Parse(std::string_view bytes, const char* what) {
  if (bytes.size() > kMaxSideChannelMessage) {
    return InvalidArgumentError(fmt::format("{}: message of {} bytes is over the limit", what, bytes.size()));
  }
  json j = json::from_msgpack(bytes.begin(), bytes.end(), /*strict=*/true, /*allow_exceptions=*/false);
  if (j.is_discarded()) return InvalidArgumentError(fmt::format("{}: not valid msgpack", what));
  if (!j.is_object()) return InvalidArgumentError(fmt::format("{}: not a msgpack map", what));
  return j;
}

Status Int(const json& j, const char* key, int64_t* out, const char* what, bool required) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) {
    if (required) return InvalidArgumentError(fmt::format("{}: missing '{}'", what, key));
    return Status::Ok();
  }
  if (it->is_number_unsigned()) {
    uint64_t v = it->get<uint64_t>();
    if (v > static_cast<uint64_t>(INT64_MAX))
      return InvalidArgumentError(fmt::format("{}: '{}' is too large", what, key));
    *out = static_cast<int64_t>(v);
    return Status::Ok();
  }
  if (!it->is_number_integer()) return InvalidArgumentError(fmt::format("{}: '{}' is not an integer", what, key));
  *out = it->get<int64_t>();
  return Status::Ok();
}

Status Str(const json& j, const char* key, std::string* out, const char* what, bool required) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) {
    if (required) return InvalidArgumentError(fmt::format("{}: missing '{}'", what, key));
    return Status::Ok();
  }
  if (!it->is_string()) return InvalidArgumentError(fmt::format("{}: '{}' is not a string", what, key));
  *out = it->get<std::string>();
  return Status::Ok();
}

template <typename T>
Status List(const json& j, const char* key, std::vector<T>* out, const char* what) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return Status::Ok();
  if (!it->is_array()) return InvalidArgumentError(fmt::format("{}: '{}' is not a list", what, key));
  if (it->size() > kMaxBlocksPerRequest) return InvalidArgumentError(fmt::format("{}: '{}' is too long", what, key));
  for (const json& x : *it) {
    if constexpr (std::is_same_v<T, std::string>) {
      if (!x.is_string()) return InvalidArgumentError(fmt::format("{}: '{}' holds a non-string", what, key));
      out->push_back(x.get<std::string>());
    } else if constexpr (std::is_same_v<T, uint64_t>) {
      if (!x.is_number_unsigned() && !(x.is_number_integer() && x.get<int64_t>() >= 0)) {
        return InvalidArgumentError(fmt::format("{}: '{}' holds a non-address", what, key));
      }
      out->push_back(x.get<uint64_t>());
    } else {
      if (!x.is_number_integer()) return InvalidArgumentError(fmt::format("{}: '{}' holds a non-integer", what, key));
      if (x.is_number_unsigned() && x.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) {
        return InvalidArgumentError(fmt::format("{}: '{}' holds a too large integer", what, key));
      }
      out->push_back(x.get<int64_t>());
    }
  }
  return Status::Ok();
}

}  // namespace

std::string EncodeXferMetadata(const XferMetadata& m) {
  json j;
  j["remote_hostname"] = m.remote_hostname;
  j["remote_port"] = m.remote_port;
  j["remote_tp_size"] = m.remote_tp_size;
  j["remote_tp_rank"] = m.remote_tp_rank;
  j["remote_pp_size"] = m.remote_pp_size;
  json rb = json::object();
  for (const auto& [id, b] : m.req_blocks) rb[id] = json::array({b.transfer_id, b.groups});
  j["req_blocks"] = std::move(rb);
  j["kv_caches_base_addr"] = m.kv_caches_base_addr;
  j["block_lens"] = m.block_lens;
  j["kv_block_lens"] = m.kv_block_lens;
  j["registered_layer_names"] = m.registered_layer_names;
  j["registered_layer_indices"] = m.registered_layer_indices;
  j["registered_group_indices"] = m.registered_group_indices;
  if (!m.kvferry_model.empty()) j["kvferry_model"] = m.kvferry_model;
  std::vector<uint8_t> out = json::to_msgpack(j);
  return std::string(out.begin(), out.end());
}

StatusOr<XferMetadata> DecodeXferMetadata(std::string_view bytes) {
  const char* what = "MooncakeXferMetadata";
  KVF_ASSIGN_OR_RETURN(json j, Parse(bytes, what));
  XferMetadata m;
  KVF_RETURN_IF_ERROR(Str(j, "remote_hostname", &m.remote_hostname, what, true));
  KVF_RETURN_IF_ERROR(Int(j, "remote_port", &m.remote_port, what, true));
  if (m.remote_port <= 0 || m.remote_port > 65535)
    return InvalidArgumentError(fmt::format("{}: bad remote_port {}", what, m.remote_port));
  KVF_RETURN_IF_ERROR(Int(j, "remote_tp_size", &m.remote_tp_size, what, false));
  KVF_RETURN_IF_ERROR(Int(j, "remote_tp_rank", &m.remote_tp_rank, what, false));
  KVF_RETURN_IF_ERROR(Int(j, "remote_pp_size", &m.remote_pp_size, what, false));
  if (m.remote_tp_size < 1 || m.remote_pp_size < 1 || m.remote_tp_rank < 0 || m.remote_tp_rank >= m.remote_tp_size) {
    return InvalidArgumentError(fmt::format("{}: inconsistent topology tp_size={} tp_rank={} pp_size={}", what,
                                            m.remote_tp_size, m.remote_tp_rank, m.remote_pp_size));
  }
  auto rb = j.find("req_blocks");
  if (rb != j.end() && !rb->is_null()) {
    if (!rb->is_object()) return InvalidArgumentError(fmt::format("{}: 'req_blocks' is not a map", what));
    if (rb->size() > kMaxRequestsPerMessage) return InvalidArgumentError(fmt::format("{}: too many requests", what));
    for (auto it = rb->begin(); it != rb->end(); ++it) {
      const json& v = it.value();
      if (!v.is_array() || v.size() != 2 || !v[0].is_string() || !v[1].is_array()) {
        return InvalidArgumentError(
            fmt::format("{}: req_blocks['{}'] is not [transfer_id, [[block ids]...]]", what, it.key()));
      }
      ReqBlocks b;
      b.transfer_id = v[0].get<std::string>();
      size_t total = 0;
      for (const json& g : v[1]) {
        if (!g.is_array())
          return InvalidArgumentError(fmt::format("{}: req_blocks['{}'] has a non-list group", what, it.key()));
        std::vector<int64_t> ids;
        total += g.size();
        if (total > kMaxBlocksPerRequest)
          return InvalidArgumentError(fmt::format("{}: req_blocks['{}'] has too many blocks", what, it.key()));
        for (const json& x : g) {
          if (!x.is_number_integer() ||
              (x.is_number_unsigned() && x.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) ||
              x.get<int64_t>() < 0) {
            return InvalidArgumentError(fmt::format("{}: req_blocks['{}'] has a bad block id", what, it.key()));
          }
          ids.push_back(x.get<int64_t>());
        }
        b.groups.push_back(std::move(ids));
      }
      m.req_blocks.emplace(it.key(), std::move(b));
    }
  }
  KVF_RETURN_IF_ERROR(List(j, "kv_caches_base_addr", &m.kv_caches_base_addr, what));
  KVF_RETURN_IF_ERROR(List(j, "block_lens", &m.block_lens, what));
  KVF_RETURN_IF_ERROR(List(j, "kv_block_lens", &m.kv_block_lens, what));
  KVF_RETURN_IF_ERROR(List(j, "registered_layer_names", &m.registered_layer_names, what));
  KVF_RETURN_IF_ERROR(List(j, "registered_layer_indices", &m.registered_layer_indices, what));
  KVF_RETURN_IF_ERROR(List(j, "registered_group_indices", &m.registered_group_indices, what));
  KVF_RETURN_IF_ERROR(Str(j, "kvferry_model", &m.kvferry_model, what, false));
  if (m.kvferry_model.size() > 512) return InvalidArgumentError(fmt::format("{}: 'kvferry_model' is too long", what));
  if (m.block_lens.size() != m.kv_caches_base_addr.size() ||
      (!m.kv_block_lens.empty() && m.kv_block_lens.size() != m.kv_caches_base_addr.size())) {
    return InvalidArgumentError(
        fmt::format("{}: kv_caches_base_addr, block_lens and kv_block_lens differ in length", what));
  }
  for (size_t i = 0; i < m.block_lens.size(); ++i) {
    if (m.block_lens[i] <= 0 ||
        (!m.kv_block_lens.empty() && (m.kv_block_lens[i] <= 0 || m.kv_block_lens[i] > m.block_lens[i]))) {
      return InvalidArgumentError(fmt::format("{}: region {} has bad block lengths", what, i));
    }
  }
  return m;
}

std::string EncodeXferResponse(const XferResponse& r) {
  json j;
  j["status"] = static_cast<int>(r.status);
  if (!r.ok_reqs.empty()) j["ok_reqs"] = r.ok_reqs;
  if (!r.err_reqs.empty()) j["err_reqs"] = r.err_reqs;
  if (!r.err_msg.empty()) j["err_msg"] = r.err_msg;
  std::vector<uint8_t> out = json::to_msgpack(j);
  return std::string(out.begin(), out.end());
}

StatusOr<XferResponse> DecodeXferResponse(std::string_view bytes) {
  const char* what = "MooncakeXferResponse";
  KVF_ASSIGN_OR_RETURN(json j, Parse(bytes, what));
  XferResponse r;
  int64_t status = 0;
  KVF_RETURN_IF_ERROR(Int(j, "status", &status, what, true));
  if (status < 0 || status > 2) return InvalidArgumentError(fmt::format("{}: unknown status {}", what, status));
  r.status = static_cast<XferStatus>(status);
  KVF_RETURN_IF_ERROR(List(j, "ok_reqs", &r.ok_reqs, what));
  KVF_RETURN_IF_ERROR(List(j, "err_reqs", &r.err_reqs, what));
  KVF_RETURN_IF_ERROR(Str(j, "err_msg", &r.err_msg, what, false));
  return r;
}

}  // namespace kvferry::connector
