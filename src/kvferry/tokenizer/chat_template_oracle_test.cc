// Differential test: chat templates of Qwen2.5, Qwen3, Llama-3 and Llama-3.1 (fixtures written
// from their published tokenizer_config.json) rendered by us, by Jinja2 (python3-jinja2, set up
// as transformers does) and by @huggingface/jinja (npm), for the same conversations.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "kvferry/tokenizer/oracle_util.h"
#include "kvferry/tokenizer/tokenizer.h"

namespace kvferry::tokenizer {
namespace {

using nlohmann::ordered_json;
using namespace testing;

std::filesystem::path Fixture(const std::string& name) {
  return SourceDir() / "src/kvferry/tokenizer/testdata/chat_templates" / (name + ".json");
}

ordered_json Msg(const char* role, const std::string& content) { return {{"role", role}, {"content", content}}; }

ordered_json WeatherTool() {
  return ordered_json::parse(R"({"type": "function", "function": {"name": "get_weather",
      "description": "Get the weather in a city, in \"C or F\".",
      "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "城市 name"},
      "unit": {"type": "string", "enum": ["C", "F"]}, "days": {"type": "integer"}}, "required": ["city"]}}})");
}

ordered_json ToolCall(const char* name, const char* args_json) {
  return {{"id", "call_1"}, {"type", "function"},
          {"function", {{"name", name}, {"arguments", ordered_json::parse(args_json)}}}};
}

struct Conversation {
  std::string label;
  ordered_json messages;
  ordered_json tools;  // null or array
  ordered_json extra;  // null or object
};

std::vector<Conversation> Conversations() {
  std::vector<Conversation> c;
  auto add = [&](std::string label, ordered_json messages, ordered_json tools = nullptr, ordered_json extra = nullptr) {
    c.push_back({std::move(label), std::move(messages), std::move(tools), std::move(extra)});
  };
  add("user only", {Msg("user", "Hello!")});
  add("system+user", {Msg("system", "You are a terse assistant."), Msg("user", "What is 2+2?")});
  add("multi-turn", {Msg("system", "Be kind."), Msg("user", "Hi"), Msg("assistant", "Hello! How can I help?"),
                     Msg("user", "Tell me a joke.")});
  add("ends with assistant", {Msg("user", "Hi"), Msg("assistant", "Hey."), Msg("user", "Bye"), Msg("assistant", "See you")});
  add("unicode and whitespace", {Msg("user", "  你好，世界 👨‍👩‍👧 e\u0301\n\n  "), Msg("assistant", "\n Ça va ? \t")});
  add("template-looking content", {Msg("user", "{{ not a tag }} {% if x %} {# c #} <|im_end|>"), Msg("assistant", "'\"\\")});
  add("empty contents", {Msg("system", ""), Msg("user", ""), Msg("assistant", "")});
  add("long multi-turn", {Msg("user", "q1"), Msg("assistant", "a1"), Msg("user", "q2"), Msg("assistant", "a2"),
                          Msg("user", "q3"), Msg("assistant", "a3"), Msg("user", "q4")});
  add("think in content", {Msg("user", "Why?"), Msg("assistant", "<think>\nreasoning here\n</think>\n\nBecause."),
                           Msg("user", "And then?")});
  add("think in last assistant", {Msg("user", "Why?"), Msg("assistant", "<think>\nhmm\n</think>\n\nDone.")});
  ordered_json reasoning = Msg("assistant", "Answer.");
  reasoning["reasoning_content"] = "  step 1\nstep 2  ";
  add("reasoning_content field", {Msg("user", "Solve"), reasoning});
  add("tools offered", {Msg("system", "Use tools."), Msg("user", "Weather in Paris?")}, ordered_json::array({WeatherTool()}));
  add("tools, no system", {Msg("user", "Weather in Paris?")}, ordered_json::array({WeatherTool()}));
  ordered_json call = {{"role", "assistant"}, {"content", ""},
                       {"tool_calls", ordered_json::array({ToolCall("get_weather", R"({"city": "Paris", "days": 3})")})}};
  add("tool call and result",
      {Msg("user", "Weather in Paris?"), call, Msg("tool", "{\"temp\": 21}"), Msg("assistant", "It is 21 degrees.")},
      ordered_json::array({WeatherTool()}));
  ordered_json two_calls = {{"role", "assistant"}, {"content", "Checking both."},
                            {"tool_calls", ordered_json::array({ToolCall("get_weather", R"({"city": "Paris"})"),
                                                                ToolCall("get_weather", R"({"city": "Oslo"})")})}};
  add("two tool calls, two results",
      {Msg("user", "Paris and Oslo?"), two_calls, Msg("tool", "sunny"), Msg("tool", "snow"), Msg("user", "Thanks")},
      ordered_json::array({WeatherTool()}));
  add("enable_thinking false", {Msg("user", "Quick answer please")}, nullptr, {{"enable_thinking", false}});
  add("system only", {Msg("system", "Only a system prompt.")});
  add("no messages", ordered_json::array());
  return c;
}

TEST(ChatTemplateOracleTest, RendersLikeJinja2AndHuggingFaceJinja) {
  std::string problem = OracleSetupProblem();
  ASSERT_TRUE(problem.empty()) << problem;
  ASSERT_EQ(std::system("/usr/bin/python3 -c 'import jinja2' 2>/dev/null"), 0)
      << "python3-jinja2 is missing: run `bash scripts/setup`";

  const std::vector<std::string> templates = {"qwen2.5", "qwen3", "llama3", "llama3.1"};
  std::vector<Conversation> conversations = Conversations();
  ordered_json in;
  struct Case {
    std::string label;
    const ChatTemplate* tmpl;
    std::string messages, tools, extra;
    bool add_generation_prompt;
  };
  std::vector<Case> cases;
  std::vector<std::unique_ptr<ChatTemplate>> loaded;
  for (const std::string& name : templates) {
    std::ifstream f(Fixture(name));
    std::string config((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    auto t = ChatTemplate::FromTokenizerConfig(config);
    ASSERT_TRUE(t.ok()) << name << ": " << t.status().ToString();
    loaded.push_back(std::move(t).value());
    for (const Conversation& conv : conversations) {
      for (bool gen : {false, true}) {
        ordered_json c = {{"config", Fixture(name).string()}, {"messages", conv.messages},
                          {"tools", conv.tools}, {"add_generation_prompt", gen}, {"extra", conv.extra}};
        in["cases"].push_back(c);
        cases.push_back({name + " / " + conv.label + (gen ? " / +gen" : ""), loaded.back().get(), conv.messages.dump(),
                         conv.tools.is_null() ? "" : conv.tools.dump(), conv.extra.is_null() ? "" : conv.extra.dump(),
                         gen});
      }
    }
  }
  auto in_path = TempPath("chat_in.json"), py_out = TempPath("chat_py.json"), js_out = TempPath("chat_js.json");
  std::ofstream(in_path) << in.dump();
  std::string py = "/usr/bin/python3 '" + (OraclesDir() / "render_chat.py").string() + "' '" + in_path.string() + "' '" +
                   py_out.string() + "'";
  ASSERT_EQ(std::system(py.c_str()), 0) << "jinja2 oracle failed";
  ASSERT_EQ(RunNode("render_chat.mjs", in_path.string(), js_out.string()), 0) << "@huggingface/jinja oracle failed";
  ordered_json py_results = ordered_json::parse(std::ifstream(py_out))["results"];
  ordered_json js_results = ordered_json::parse(std::ifstream(js_out))["results"];
  for (auto& p : {in_path, py_out, js_out}) std::filesystem::remove(p);
  ASSERT_EQ(py_results.size(), cases.size());

  int identical = 0, errors_agreed = 0, js_agree = 0;
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    ChatRenderOptions options;
    options.add_generation_prompt = c.add_generation_prompt;
    options.tools_json = c.tools;
    options.extra_vars_json = c.extra;
    StatusOr<std::string> ours = c.tmpl->Render(c.messages, options);
    const ordered_json& ref = py_results[i];
    const ordered_json& js = js_results[i];
    if (ref["ok"].get<bool>()) {
      std::string expected = ref["text"].get<std::string>();
      if (!ours.ok()) {
        ADD_FAILURE() << c.label << ": we failed with " << ours.status().ToString();
        continue;
      }
      EXPECT_EQ(*ours, expected) << c.label;
      if (*ours == expected) ++identical;
      if (js["ok"].get<bool>() && js["text"].get<std::string>() == expected) {
        ++js_agree;
      } else {
        std::printf("note: @huggingface/jinja differs from jinja2 on %s\n", c.label.c_str());
      }
    } else {
      EXPECT_FALSE(ours.ok()) << c.label << ": jinja2 raised " << ref["error"] << " but we rendered:\n" << *ours;
      if (!ours.ok()) ++errors_agreed;
      if (!js["ok"].get<bool>()) ++js_agree;
    }
  }
  std::printf("%zu renders: %d byte-identical to jinja2, %d errors raised by both; "
              "@huggingface/jinja agreed with jinja2 on %d\n",
              cases.size(), identical, errors_agreed, js_agree);
}

}  // namespace
}  // namespace kvferry::tokenizer
