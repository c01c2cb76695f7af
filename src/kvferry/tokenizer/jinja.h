#pragma once
// Private: a Jinja2 subset interpreter for chat templates (what the Qwen2.5, Qwen3 and Llama-3
// templates use), with transformers' settings: trim_blocks, lstrip_blocks, loop controls,
// `raise_exception`, and a `tojson` that behaves like json.dumps(ensure_ascii=False).
// Anything outside the subset is an Unimplemented error at parse time (or at render time for a
// method/filter called on a type that lacks it), never a silently different output.

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "kvferry/base/base.h"

namespace kvferry::tokenizer::jinja {

class Value;
using Array = std::vector<Value>;
// Insertion-ordered, like a Python dict.
struct Object {
  std::vector<std::pair<std::string, Value>> items;
  bool is_namespace = false;
  const Value* Find(std::string_view key) const;
  void Set(std::string key, Value value);
};

struct Macro;

class Value {
 public:
  enum class Kind { kUndefined, kNone, kBool, kInt, kFloat, kString, kArray, kObject, kMacro };

  Value() = default;  // undefined
  static Value None() { return Value(Kind::kNone); }
  Value(bool b) : kind_(Kind::kBool), int_(b) {}  // NOLINT
  Value(int64_t i) : kind_(Kind::kInt), int_(i) {}  // NOLINT
  Value(int i) : kind_(Kind::kInt), int_(i) {}  // NOLINT
  Value(double f) : kind_(Kind::kFloat), float_(f) {}  // NOLINT
  Value(std::string s) : kind_(Kind::kString), string_(std::make_shared<std::string>(std::move(s))) {}  // NOLINT
  Value(const char* s) : Value(std::string(s)) {}  // NOLINT
  Value(std::string_view s) : Value(std::string(s)) {}  // NOLINT
  Value(Array a) : kind_(Kind::kArray), array_(std::make_shared<Array>(std::move(a))) {}  // NOLINT
  Value(Object o) : kind_(Kind::kObject), object_(std::make_shared<Object>(std::move(o))) {}  // NOLINT
  explicit Value(std::shared_ptr<const Macro> m) : kind_(Kind::kMacro), macro_(std::move(m)) {}

  Kind kind() const { return kind_; }
  bool is_undefined() const { return kind_ == Kind::kUndefined; }
  bool is_none() const { return kind_ == Kind::kNone; }
  bool is_bool() const { return kind_ == Kind::kBool; }
  bool is_int() const { return kind_ == Kind::kInt; }
  bool is_float() const { return kind_ == Kind::kFloat; }
  bool is_number() const { return kind_ == Kind::kInt || kind_ == Kind::kFloat; }
  bool is_string() const { return kind_ == Kind::kString; }
  bool is_array() const { return kind_ == Kind::kArray; }
  bool is_object() const { return kind_ == Kind::kObject; }
  bool is_macro() const { return kind_ == Kind::kMacro; }

  bool bool_value() const { return int_ != 0; }
  int64_t int_value() const { return int_; }
  double number() const { return kind_ == Kind::kFloat ? float_ : double(int_); }
  const std::string& str() const { return *string_; }
  const Array& array() const { return *array_; }
  Array& mutable_array() { return *array_; }
  const Object& object() const { return *object_; }
  Object& mutable_object() const { return *object_; }  // shared: namespaces are mutable by reference
  const std::shared_ptr<const Macro>& macro() const { return macro_; }

  // Python truthiness.
  bool Truthy() const;
  // str(value) as Python prints it (None, True, 1.5, ['a'], {'k': 1}); undefined is "".
  std::string ToString() const;
  // repr(value).
  std::string Repr() const;
  // json.dumps(value, ensure_ascii=False, indent=indent (negative: none), sort_keys).
  StatusOr<std::string> ToJson(int indent, bool sort_keys) const;
  // Python ==.
  bool Equals(const Value& other) const;
  std::string_view TypeName() const;

 private:
  explicit Value(Kind k) : kind_(k) {}
  Kind kind_ = Kind::kUndefined;
  int64_t int_ = 0;
  double float_ = 0;
  std::shared_ptr<std::string> string_;
  std::shared_ptr<Array> array_;
  std::shared_ptr<Object> object_;
  std::shared_ptr<const Macro> macro_;
};

// Parses JSON text into a Value (objects keep their key order). InvalidArgument on bad JSON.
StatusOr<Value> ValueFromJson(std::string_view json);

// Python-style helpers shared by the evaluator.
std::string FormatFloat(double f);
size_t CodePointCount(std::string_view s);

struct Node;
using NodePtr = std::unique_ptr<Node>;

class Template {
 public:
  // Parses `source`. InvalidArgument for a syntax error, Unimplemented for a construct outside
  // the subset; the message names the line.
  static StatusOr<std::unique_ptr<Template>> Parse(std::string_view source);
  ~Template();

  struct Limits {
    size_t max_output_bytes = 64 << 20;
    uint64_t max_steps = 5'000'000;  // loop iterations + node evaluations (a long chat needs ~1e5)
  };
  // Renders with `globals` (a Value of kind object). Thread-safe: rendering never mutates the
  // template.
  StatusOr<std::string> Render(const Value& globals, const Limits& limits) const;
  StatusOr<std::string> Render(const Value& globals) const { return Render(globals, Limits{}); }

 private:
  Template() = default;
  std::vector<NodePtr> body_;
};

// ---- AST (shared by the parser and the evaluator) ----

enum class NodeKind {
  // expressions
  kLiteral, kName, kGetAttr, kGetItem, kSlice, kCall, kFilter, kTest, kUnary, kBinary, kAnd, kOr, kNot,
  kCondExpr, kList, kDict, kTuple,
  // statements
  kText, kOutput, kIf, kFor, kSet, kSetBlock, kMacro, kBreak, kContinue, kCallBlock
};

struct Node {
  NodeKind kind;
  int line = 0;
  Value literal;           // kLiteral; kText holds its text in `name`
  std::string name;        // kName, kGetAttr attribute, kFilter/kTest name, kBinary operator, kText
  std::vector<NodePtr> children;  // operands / args / list items / dict keys+values
  std::vector<std::string> kwarg_names;  // kCall/kFilter/kTest: names of trailing keyword args
  size_t num_positional = 0;             // kCall/kFilter/kTest: how many children are positional
  bool negated = false;                  // kTest (is not)
  // statements
  std::vector<std::string> targets;                   // kFor loop variables; kSet names (a.b as "a.b")
  std::vector<std::pair<NodePtr, std::vector<NodePtr>>> branches;  // kIf: (cond or null for else, body)
  std::vector<NodePtr> body;                          // kFor/kSetBlock/kMacro body
  std::vector<NodePtr> else_body;                     // kFor else
  NodePtr expr;                                       // kFor iterable, kSet value, kOutput
  NodePtr cond;                                       // kFor filter
};

struct Macro {
  std::string name;
  std::vector<std::string> params;
  std::vector<const Node*> defaults;  // parallel to params; null when none
  const std::vector<NodePtr>* body = nullptr;
};

}  // namespace kvferry::tokenizer::jinja
