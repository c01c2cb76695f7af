#include "kvferry/tokenizer/jinja.h"

#include <gtest/gtest.h>

#include "kvferry/tokenizer/tokenizer.h"

namespace kvferry::tokenizer::jinja {
namespace {

StatusOr<std::string> Render(std::string_view source, std::string_view globals_json = "{}") {
  KVF_ASSIGN_OR_RETURN(auto t, Template::Parse(source));
  KVF_ASSIGN_OR_RETURN(Value globals, ValueFromJson(globals_json));
  return t->Render(globals);
}

std::string R(std::string_view source, std::string_view globals_json = "{}") {
  auto r = Render(source, globals_json);
  return r.ok() ? *r : "ERROR " + r.status().ToString();
}

TEST(JinjaTest, WhitespaceControlLikeTransformers) {
  // trim_blocks + lstrip_blocks, '-' strips, one trailing newline dropped.
  EXPECT_EQ(R("{% if true %}\n  a\n  {% endif %}\nb\n"), "  a\nb");
  EXPECT_EQ(R("x  {%- if true -%}  y  {%- endif %}"), "xy");
  EXPECT_EQ(R("{# comment #}\nz"), "z");
  EXPECT_EQ(R("a {{- ' b ' -}} c"), "a b c");
}

TEST(JinjaTest, LoopsScopesAndNamespaces) {
  EXPECT_EQ(R("{% set x = 1 %}{% for i in [1, 2] %}{% set x = i %}{% endfor %}{{ x }}"), "1");
  EXPECT_EQ(R("{% set ns = namespace(x=1) %}{% for i in [1, 2] %}{% set ns.x = i %}{% endfor %}{{ ns.x }}"), "2");
  EXPECT_EQ(R("{% for i in xs %}{{ loop.index }}{{ loop.first }}{{ loop.last }}{{ loop.length }},{% endfor %}",
              R"({"xs": ["a", "b"]})"),
            "1TrueFalse2,2FalseTrue2,");
  EXPECT_EQ(R("{% for i in [] %}x{% else %}empty{% endfor %}"), "empty");
  EXPECT_EQ(R("{% for i in range(5) if i is odd %}{{ i }}{% endfor %}"), "13");
  EXPECT_EQ(R("{% for i in range(5) %}{% if i == 3 %}{% break %}{% endif %}{% if i == 1 %}{% continue %}{% endif %}{{ i }}{% endfor %}"), "02");
  EXPECT_EQ(R("{% for k, v in d | items %}{{ k }}={{ v }};{% endfor %}", R"({"d": {"b": 1, "a": 2}})"), "b=1;a=2;");
  EXPECT_EQ(R("{% macro greet(name, punct='!') %}Hi {{ name }}{{ punct }}{% endmacro %}{{ greet('Bo') }}{{ greet('Al', punct='?') }}"),
            "Hi Bo!Hi Al?");
}

TEST(JinjaTest, ExpressionsFollowPython) {
  EXPECT_EQ(R("{{ 7 // 2 }} {{ -7 // 2 }} {{ -7 % 3 }} {{ 7 / 2 }} {{ 2 ** 10 }} {{ 1 + 2.0 }}"), "3 -4 2 3.5 1024 3.0");
  EXPECT_EQ(R("{{ [1, 'a', none, true] }} {{ {'k': 'v'} }}"), "[1, 'a', None, True] {'k': 'v'}");
  EXPECT_EQ(R("{{ 'abc'[::-1] }} {{ [1,2,3][1:] }} {{ 'héllo'[1] }} {{ 'héllo' | length }}"), "cba [2, 3] é 5");
  EXPECT_EQ(R("{{ 'a' if x else 'b' }}{{ x is defined }}{{ y is none }}", R"({"y": null})"), "bFalseTrue");
  EXPECT_EQ(R("{{ 'x' in 'xyz' }} {{ 2 not in [1, 2] }} {{ 'k' in d }}", R"({"d": {"k": 1}})"), "True False True");
  EXPECT_EQ(R("{{ '  a b  '.strip() }}|{{ 'a,b,,c'.split(',') }}|{{ ' x y '.split() }}|{{ 'xxhixx'.strip('x') }}"),
            "a b|['a', 'b', '', 'c']|['x', 'y']|hi");
  EXPECT_EQ(R("{{ 'Hello'.startswith('He') }} {{ 'a<b>'.endswith(('>', ']')) }} {{ 'ab'.upper() }}"), "True True AB");
  EXPECT_EQ(R("{{ 1 ~ 'x' ~ none }}"), "1xNone");
}

TEST(JinjaTest, FiltersAndToJson) {
  EXPECT_EQ(R("{{ x | tojson }}", R"({"x": {"a": [1, 2.5, "é\n\"", null, true], "b": {}}})"),
            R"({"a": [1, 2.5, "é\n\"", null, true], "b": {}})");
  EXPECT_EQ(R("{{ x | tojson(indent=2) }}", R"({"x": {"a": [1], "b": []}})"), "{\n  \"a\": [\n    1\n  ],\n  \"b\": []\n}");
  EXPECT_EQ(R("{{ xs | join(', ') }}|{{ xs | reject('equalto', 'b') | list }}|{{ xs | first }}{{ xs | last }}",
              R"({"xs": ["a", "b", "c"]})"),
            "a, b, c|['a', 'c']|ac");
  EXPECT_EQ(R("{{ ms | selectattr('role', 'equalto', 'user') | map(attribute='content') | join }}",
              R"({"ms": [{"role": "user", "content": "x"}, {"role": "bot", "content": "y"}, {"role": "user", "content": "z"}]})"),
            "xz");
  EXPECT_EQ(R("{{ u | default('d') }}{{ '' | default('e', true) }}{{ '  t ' | trim }}{{ 'a' | upper }}"), "detA");
}

TEST(JinjaTest, ErrorsAreStatuses) {
  EXPECT_EQ(Render("{{ raise_exception('bad role') }}").status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(Render("{{ raise_exception('bad role') }}").status().message().find("bad role"), std::string::npos);
  EXPECT_EQ(Render("{% include 'x' %}").status().code(), StatusCode::kUnimplemented);
  EXPECT_EQ(Render("{{ x | wordwrap }}").status().code(), StatusCode::kUnimplemented);
  EXPECT_EQ(Render("{{ x is prime }}").status().code(), StatusCode::kUnimplemented);
  EXPECT_EQ(Render("{% for %}").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(Render("{% if x %}").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(Render("{{ 'a' + 1 }}").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(Render("{{ x.y.z }}").status().code(), StatusCode::kInvalidArgument);  // attribute of undefined
  EXPECT_EQ(Render("{{ xs.append(1) }}", R"({"xs": []})").status().code(), StatusCode::kUnimplemented);
  auto loops = Template::Parse("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}");
  ASSERT_TRUE(loops.ok());
  Template::Limits limits;
  limits.max_steps = 100000;
  EXPECT_EQ((*loops)->Render(Value(Object{}), limits).status().code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(Render("{{ 'x' * 100000000000 }}").status().code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(Render("{{ " + std::string(5000, '(') + "1" + std::string(5000, ')') + " }}").status().code(), StatusCode::kInvalidArgument);
}

TEST(ChatTemplateTest, RendersStructuredMessages) {
  auto t = ChatTemplate::Create(
      "{{ bos_token }}{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}",
      "<s>", "</s>");
  ASSERT_TRUE(t.ok());
  std::vector<ChatMessage> msgs = {{"user", "hi"}, {"assistant", "yo"}};
  EXPECT_EQ(*(*t)->Render(msgs), "<s><user>hi<assistant>yo<assistant>");
  ChatRenderOptions no_gen;
  no_gen.add_generation_prompt = false;
  EXPECT_EQ(*(*t)->Render(R"([{"role": "user", "content": "x"}])", no_gen), "<s><user>x");
  EXPECT_EQ((*t)->Render("not json").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ChatTemplate::FromTokenizerConfig(R"({"eos_token": "x"})").status().code(), StatusCode::kNotFound);
  auto listed = ChatTemplate::FromTokenizerConfig(
      R"({"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]})");
  ASSERT_TRUE(listed.ok());
  EXPECT_EQ(*(*listed)->Render("[]"), "D");
}

}  // namespace
}  // namespace kvferry::tokenizer::jinja
