#include "kvferry/server/api.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

namespace kvferry::server {
namespace {

using Kind = GenerateRequest::Kind;

TEST(ApiTest, CompletionWithEverySamplingField) {
  std::string param;
  auto r = ParseGenerateRequest(R"({"model":"m","prompt":"Hello","max_tokens":7,"temperature":0.5,"top_p":0.9,
      "top_k":40,"min_p":0.05,"presence_penalty":0.1,"frequency_penalty":-0.2,"repetition_penalty":1.1,
      "seed":-3,"stop":["\n\n","END"],"stop_token_ids":[5],"ignore_eos":true,"min_tokens":2,"logprobs":3,
      "stream":true,"stream_options":{"include_usage":true},"user":"x","unknown_field":{}})",
                                Kind::kCompletion, &param);
  ASSERT_TRUE(r.ok()) << r.status().ToString() << " " << param;
  EXPECT_EQ(*r->prompt_text, "Hello");
  EXPECT_EQ(*r->max_tokens, 7);
  EXPECT_DOUBLE_EQ(r->temperature, 0.5);
  EXPECT_EQ(r->top_k, 40);
  EXPECT_EQ(*r->seed, static_cast<uint64_t>(-3));
  EXPECT_EQ(r->stop.size(), 2u);
  EXPECT_EQ(r->logprobs, 3);
  EXPECT_TRUE(r->stream);
  EXPECT_TRUE(r->include_usage);
  EXPECT_TRUE(r->ignore_eos);
  EXPECT_FALSE(r->kv.present);
}

TEST(ApiTest, PromptForms) {
  auto ids = ParseGenerateRequest(R"({"prompt":[1,2,3]})", Kind::kCompletion);
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(ids->prompt_ids, (std::vector<int32_t>{1, 2, 3}));
  EXPECT_FALSE(ids->prompt_text.has_value());
  auto nested = ParseGenerateRequest(R"({"prompt":[[4,5]]})", Kind::kCompletion);
  ASSERT_TRUE(nested.ok());
  EXPECT_EQ(nested->prompt_ids.size(), 2u);
  auto one = ParseGenerateRequest(R"({"prompt":["hi"]})", Kind::kCompletion);
  ASSERT_TRUE(one.ok());
  EXPECT_EQ(*one->prompt_text, "hi");
  std::string param;
  EXPECT_FALSE(ParseGenerateRequest(R"({"prompt":["a","b"]})", Kind::kCompletion, &param).ok());
  EXPECT_EQ(param, "prompt");
  EXPECT_FALSE(ParseGenerateRequest(R"({"prompt":""})", Kind::kCompletion).ok());
  EXPECT_FALSE(ParseGenerateRequest(R"({"prompt":[]})", Kind::kCompletion).ok());
  EXPECT_FALSE(ParseGenerateRequest(R"({"prompt":[1,-2]})", Kind::kCompletion).ok());
  EXPECT_FALSE(ParseGenerateRequest(R"({"prompt":[1,2.5]})", Kind::kCompletion).ok());
  EXPECT_FALSE(ParseGenerateRequest(R"({})", Kind::kCompletion).ok());
}

TEST(ApiTest, ChatMessagesAndOptions) {
  auto r = ParseGenerateRequest(R"({"messages":[{"role":"system","content":"Be brief."},
      {"role":"user","content":[{"type":"text","text":"Hi"}]}],"max_completion_tokens":5,
      "logprobs":true,"top_logprobs":2,"chat_template_kwargs":{"enable_thinking":false}})",
                                Kind::kChat);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  auto msgs = nlohmann::json::parse(r->messages_json);
  EXPECT_EQ(msgs.size(), 2u);
  EXPECT_EQ(*r->max_tokens, 5);
  EXPECT_EQ(r->logprobs, 2);
  EXPECT_TRUE(r->add_generation_prompt);
  EXPECT_EQ(r->chat_template_kwargs_json, R"({"enable_thinking":false})");
  std::string param;
  EXPECT_FALSE(ParseGenerateRequest(R"({"messages":[{"content":"x"}]})", Kind::kChat, &param).ok());
  EXPECT_EQ(param, "messages[0].role");
  EXPECT_FALSE(ParseGenerateRequest(R"({"messages":[]})", Kind::kChat, &param).ok());
  EXPECT_FALSE(ParseGenerateRequest(R"({"messages":[{"role":"user","content":[{"type":"image_url"}]}]})", Kind::kChat,
                                    &param)
                   .ok());
  EXPECT_EQ(param, "messages[0].content");
  EXPECT_FALSE(ParseGenerateRequest(R"({"messages":[{"role":"user","content":"x"}],"top_logprobs":2})", Kind::kChat,
                                    &param)
                   .ok());
  EXPECT_EQ(param, "top_logprobs");
}

TEST(ApiTest, HostileValuesAreRejectedWithTheParam) {
  struct Case {
    const char* body;
    const char* param;
  } cases[] = {
      {R"({"prompt":"x","temperature":-1})", "temperature"},
      {R"({"prompt":"x","temperature":"hot"})", "temperature"},
      {R"({"prompt":"x","top_p":0})", "top_p"},
      {R"({"prompt":"x","top_p":1.5})", "top_p"},
      {R"({"prompt":"x","max_tokens":0})", "max_tokens"},
      {R"({"prompt":"x","max_tokens":-5})", "max_tokens"},
      {R"({"prompt":"x","max_tokens":1e30})", "max_tokens"},
      {R"({"prompt":"x","max_tokens":"10"})", "max_tokens"},
      {R"({"prompt":"x","n":0})", "n"},
      {R"({"prompt":"x","logprobs":21})", "logprobs"},
      {R"({"prompt":"x","stop":[1]})", "stop"},
      {R"({"prompt":"x","stop":[""]})", "stop"},
      {R"({"prompt":"x","stream_options":{"include_usage":true}})", "stream_options"},
      {R"({"prompt":"x","stream":"yes"})", "stream"},
      {R"({"prompt":"x","echo":true})", "echo"},
      {R"({"prompt":"x","repetition_penalty":0})", "repetition_penalty"},
      {R"({"prompt":"x","presence_penalty":3})", "presence_penalty"},
      {R"({"prompt":"x","min_tokens":5,"max_tokens":2})", "min_tokens"},
      {R"({"prompt":"x","model":5})", "model"},
      {R"({"prompt":"x","kv_transfer_params":[]})", "kv_transfer_params"},
      {R"({"prompt":"x","kv_transfer_params":{"do_remote_decode":"yes"}})", "kv_transfer_params.do_remote_decode"},
      {R"({"prompt":"x","kv_transfer_params":{"do_remote_decode":true}})", "kv_transfer_params.transfer_id"},
      {R"({"prompt":"x","kv_transfer_params":{"do_remote_prefill":true,"transfer_id":"t"}})", "kv_transfer_params"},
  };
  for (const Case& c : cases) {
    std::string param;
    auto r = ParseGenerateRequest(c.body, Kind::kCompletion, &param);
    ASSERT_FALSE(r.ok()) << c.body;
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(param, c.param) << c.body << ": " << r.status().message();
  }
  EXPECT_FALSE(ParseGenerateRequest("{not json", Kind::kCompletion).ok());
  EXPECT_FALSE(ParseGenerateRequest("[1,2]", Kind::kCompletion).ok());
  EXPECT_FALSE(ParseGenerateRequest("\xff\xfe", Kind::kCompletion).ok());
}

TEST(ApiTest, KvTransferParamsOfBothLegs) {
  auto p = ParseGenerateRequest(R"({"prompt":"x","max_tokens":1,"kv_transfer_params":{"do_remote_decode":true,
      "do_remote_prefill":false,"transfer_id":"xfer-1"}})",
                                Kind::kCompletion);
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  EXPECT_TRUE(p->kv.present);
  EXPECT_TRUE(p->kv.do_remote_decode);
  EXPECT_EQ(p->kv.transfer_id, "xfer-1");
  auto d = ParseGenerateRequest(R"({"prompt":"x","kv_transfer_params":{"do_remote_prefill":true,"do_remote_decode":false,
      "remote_bootstrap_addr":"http://10.0.0.2:8998","remote_engine_id":"e","transfer_id":"xfer-1","remote_dp_rank":0}})",
                                Kind::kCompletion);
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  EXPECT_TRUE(d->kv.do_remote_prefill);
  EXPECT_EQ(d->kv.remote_bootstrap_addr, "http://10.0.0.2:8998");
  EXPECT_EQ(*d->kv.remote_dp_rank, 0);
}

// What vllm-router's typed re-serialization adds to every body, and llm-d's prefill leg.
TEST(ApiTest, RouterBodiesParseAndNameTheIgnoredFields) {
  auto chat = ParseGenerateRequest(
      R"({"model":"m","messages":[{"role":"user","content":"hi"}],"stream":false,"logprobs":false,
          "ignore_eos":false,"no_stop_trim":false,"skip_special_tokens":true,"add_generation_prompt":true,
          "continue_final_message":false,"separate_reasoning":true,"stream_reasoning":true,
          "include_reasoning":true,"return_hidden_states":false,"top_logprobs":0,"user":"u"})",
      Kind::kChat);
  ASSERT_TRUE(chat.ok()) << chat.status().ToString();
  EXPECT_EQ(chat->ignored_fields, (std::vector<std::string>{"include_reasoning", "no_stop_trim",
                                                           "return_hidden_states", "separate_reasoning",
                                                           "stream_reasoning"}));
  auto cmpl = ParseGenerateRequest(
      R"({"prompt":"x","stream":false,"echo":false,"ignore_eos":false,"no_stop_trim":false,
          "skip_special_tokens":true,"return_hidden_states":false})",
      Kind::kCompletion);
  ASSERT_TRUE(cmpl.ok()) << cmpl.status().ToString();
  EXPECT_EQ(cmpl->ignored_fields, (std::vector<std::string>{"no_stop_trim", "return_hidden_states"}));
  // llm-d caps max_tokens at 1 on the prefill leg and keeps the client's min_tokens.
  auto pleg = ParseGenerateRequest(
      R"({"prompt":"x","max_tokens":1,"min_tokens":4,
          "kv_transfer_params":{"do_remote_decode":true,"do_remote_prefill":false,"transfer_id":"t"}})",
      Kind::kCompletion);
  ASSERT_TRUE(pleg.ok()) << pleg.status().ToString();
  EXPECT_EQ(pleg->min_tokens, 1);
  EXPECT_FALSE(ParseGenerateRequest(R"({"prompt":"x","max_tokens":1,"min_tokens":4})", Kind::kCompletion).ok());
}

TEST(ApiTest, PeekKvTransferParamsOfABadBody) {
  KvTransferParams kv = PeekKvTransferParams(
      R"({"prompt":"x","temperature":-1,"kv_transfer_params":{"do_remote_decode":true,"transfer_id":"xfer-1"}})");
  EXPECT_TRUE(kv.present);
  EXPECT_TRUE(kv.do_remote_decode);
  EXPECT_EQ(kv.transfer_id, "xfer-1");
  EXPECT_FALSE(PeekKvTransferParams("not json").present);
  EXPECT_FALSE(PeekKvTransferParams(R"({"kv_transfer_params":{"do_remote_decode":true}})").present);
}

TEST(ApiTest, ResponsesBecomeChat) {
  auto r = ParseGenerateRequest(
      R"({"model":"m","instructions":"be brief","input":[{"role":"user","content":[{"type":"input_text","text":"a"},
          {"type":"input_text","text":"b"}]},{"type":"message","role":"assistant","content":"c"}],
          "max_output_tokens":9,"max_tokens":3,"temperature":0.2,"stream":true,"store":false,"truncation":"disabled"})",
      Kind::kResponses);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->kind, Kind::kResponses);
  EXPECT_EQ(r->instructions, "be brief");
  EXPECT_EQ(nlohmann::json::parse(r->messages_json),
            nlohmann::json::parse(R"([{"role":"system","content":"be brief"},{"role":"user","content":"ab"},
                                      {"role":"assistant","content":"c"}])"));
  EXPECT_EQ(*r->max_tokens, 3);  // the smaller of max_output_tokens and a router's max_tokens
  EXPECT_DOUBLE_EQ(r->temperature, 0.2);
  EXPECT_TRUE(r->stream);
  EXPECT_TRUE(r->ignored_fields.empty());
  auto text = ParseGenerateRequest(R"({"input":"hello"})", Kind::kResponses);
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(nlohmann::json::parse(text->messages_json), nlohmann::json::parse(R"([{"role":"user","content":"hello"}])"));
  EXPECT_FALSE(text->max_tokens.has_value());
  std::string param;
  EXPECT_FALSE(ParseGenerateRequest(R"({})", Kind::kResponses, &param).ok());
  EXPECT_EQ(param, "input");
  EXPECT_FALSE(ParseGenerateRequest(R"({"input":[{"type":"function_call_output","output":"x"}]})", Kind::kResponses,
                                    &param).ok());
  EXPECT_EQ(param, "input[0].type");
  EXPECT_FALSE(ParseGenerateRequest(R"({"input":"x","tools":[{"type":"function"}]})", Kind::kResponses).ok());
  EXPECT_FALSE(ParseGenerateRequest(R"({"input":"x","max_output_tokens":0})", Kind::kResponses).ok());
}

TEST(ApiTest, ErrorMappingAndJson) {
  EXPECT_EQ(HttpStatusFor(InvalidArgumentError("x")), 400);
  EXPECT_EQ(HttpStatusFor(NotFoundError("x")), 404);
  EXPECT_EQ(HttpStatusFor(ResourceExhaustedError("x")), 503);
  EXPECT_EQ(HttpStatusFor(UnauthenticatedError("x")), 401);
  EXPECT_EQ(HttpStatusFor(InternalError("x")), 500);
  auto j = nlohmann::json::parse(ErrorJson(400, "bad \xff value", "temperature"));
  EXPECT_EQ(j["error"]["type"], "BadRequestError");
  EXPECT_EQ(j["error"]["param"], "temperature");
  EXPECT_EQ(j["error"]["code"], 400);
  EXPECT_TRUE(nlohmann::json::parse(ErrorJson(404, "no"))["error"]["param"].is_null());
}

}  // namespace
}  // namespace kvferry::server
