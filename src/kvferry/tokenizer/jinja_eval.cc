// The Jinja evaluator: statements, expressions, and the calls (functions, methods, filters,
// tests) of the supported subset. Python semantics throughout (see jinja.h).
#include <utf8proc.h>

#include <algorithm>
#include <cmath>
#include <ctime>
#include <functional>
#include <unordered_map>

#include "kvferry/tokenizer/jinja.h"
#include "kvferry/tokenizer/unicode.h"

namespace kvferry::tokenizer::jinja {

// Defined in jinja_calls.cc.
StatusOr<Value> ApplyFilter(const std::string& name, const Value& v, const std::vector<Value>& args,
                            const std::vector<std::pair<std::string, Value>>& kwargs, int line,
                            const std::function<StatusOr<bool>(const std::string&, const Value&,
                                                               const std::vector<Value>&)>& test);
StatusOr<bool> ApplyTest(const std::string& name, const Value& v, const std::vector<Value>& args, int line);
StatusOr<Value> CallMethod(const Value& obj, const std::string& name, const std::vector<Value>& args,
                           const std::vector<std::pair<std::string, Value>>& kwargs, int line);
std::vector<uint32_t> CodePoints(std::string_view s);
std::string FromCodePoints(const std::vector<uint32_t>& cps, size_t begin, size_t end);

namespace {

enum class Flow { kNormal, kBreak, kContinue };

Status LineError(int line, const std::string& what) {
  return InvalidArgumentError("template line " + std::to_string(line) + ": " + what);
}

class Renderer {
 public:
  Renderer(const Value& globals, const Template::Limits& limits) : limits_(limits) {
    scopes_.emplace_back();
    if (globals.is_object()) {
      for (const auto& [k, v] : globals.object().items) scopes_[0][k] = v;
    }
  }

  StatusOr<std::string> Run(const std::vector<NodePtr>& body) {
    KVF_ASSIGN_OR_RETURN(Flow flow, ExecBlock(body, &out_));
    (void)flow;
    return std::move(out_);
  }

 private:
  using Scope = std::unordered_map<std::string, Value>;

  Status Step(int line) {
    if (++steps_ > limits_.max_steps) {
      return ResourceExhaustedError("template line " + std::to_string(line) + ": evaluation step limit reached");
    }
    return Status::Ok();
  }

  const Value* Lookup(const std::string& name) const {
    for (auto it = scopes_.rbegin(); it != scopes_.rend(); ++it) {
      auto f = it->find(name);
      if (f != it->end()) return &f->second;
    }
    return nullptr;
  }

  Status Emit(std::string_view s, std::string* out) {
    if (out->size() + s.size() > limits_.max_output_bytes) return ResourceExhaustedError("template output too large");
    out->append(s);
    return Status::Ok();
  }

  StatusOr<Flow> ExecBlock(const std::vector<NodePtr>& body, std::string* out) {
    for (const NodePtr& n : body) {
      KVF_ASSIGN_OR_RETURN(Flow flow, Exec(*n, out));
      if (flow != Flow::kNormal) return flow;
    }
    return Flow::kNormal;
  }

  StatusOr<Flow> Exec(const Node& n, std::string* out) {
    KVF_RETURN_IF_ERROR(Step(n.line));
    switch (n.kind) {
      case NodeKind::kText: KVF_RETURN_IF_ERROR(Emit(n.name, out)); return Flow::kNormal;
      case NodeKind::kOutput: {
        KVF_ASSIGN_OR_RETURN(Value v, Eval(*n.expr));
        KVF_RETURN_IF_ERROR(Emit(v.ToString(), out));
        return Flow::kNormal;
      }
      case NodeKind::kIf:
        for (const auto& [cond, branch] : n.branches) {
          bool take = true;
          if (cond) {
            KVF_ASSIGN_OR_RETURN(Value c, Eval(*cond));
            take = c.Truthy();
          }
          if (take) return ExecBlock(branch, out);
        }
        return Flow::kNormal;
      case NodeKind::kFor: return ExecFor(n, out);
      case NodeKind::kSet: {
        KVF_ASSIGN_OR_RETURN(Value v, Eval(*n.expr));
        return Assign(n, std::move(v));
      }
      case NodeKind::kSetBlock: {
        std::string captured;
        KVF_ASSIGN_OR_RETURN(Flow flow, ExecBlock(n.body, &captured));
        (void)flow;
        return Assign(n, Value(std::move(captured)));
      }
      case NodeKind::kMacro: {
        auto m = std::make_shared<Macro>();
        m->name = n.name;
        m->params = n.targets;
        for (const NodePtr& d : n.children) m->defaults.push_back(d.get());
        m->body = &n.body;
        scopes_.back()[n.name] = Value(std::shared_ptr<const Macro>(std::move(m)));
        return Flow::kNormal;
      }
      case NodeKind::kBreak:
        if (loop_depth_ == 0) return LineError(n.line, "break outside a loop");
        return Flow::kBreak;
      case NodeKind::kContinue:
        if (loop_depth_ == 0) return LineError(n.line, "continue outside a loop");
        return Flow::kContinue;
      default: return LineError(n.line, "not a statement");
    }
  }

  StatusOr<Flow> Assign(const Node& n, Value v) {
    if (n.targets.size() == 1) {
      const std::string& t = n.targets[0];
      size_t dot = t.find('.');
      if (dot == std::string::npos) {
        scopes_.back()[t] = std::move(v);
        return Flow::kNormal;
      }
      const Value* ns = Lookup(t.substr(0, dot));
      if (ns == nullptr || !ns->is_object() || !ns->object().is_namespace) {
        return LineError(n.line, "cannot assign attribute on non-namespace object '" + t.substr(0, dot) + "'");
      }
      ns->mutable_object().Set(t.substr(dot + 1), std::move(v));
      return Flow::kNormal;
    }
    KVF_ASSIGN_OR_RETURN(std::vector<Value> items, Unpack(v, n.targets.size(), n.line));
    for (size_t i = 0; i < items.size(); ++i) {
      if (n.targets[i].find('.') != std::string::npos) return LineError(n.line, "namespace targets in tuple set");
      scopes_.back()[n.targets[i]] = std::move(items[i]);
    }
    return Flow::kNormal;
  }

  StatusOr<std::vector<Value>> Unpack(const Value& v, size_t count, int line) {
    KVF_ASSIGN_OR_RETURN(std::vector<Value> items, Iterate(v, line));
    if (items.size() != count) {
      return LineError(line, "cannot unpack " + std::to_string(items.size()) + " values into " + std::to_string(count));
    }
    return items;
  }

  // Python iteration: list items, dict keys, string characters; undefined iterates as empty.
  StatusOr<std::vector<Value>> Iterate(const Value& v, int line) {
    std::vector<Value> items;
    switch (v.kind()) {
      case Value::Kind::kUndefined: return items;
      case Value::Kind::kArray: return v.array();
      case Value::Kind::kObject:
        if (v.object().is_namespace) break;
        for (const auto& kv : v.object().items) items.push_back(Value(kv.first));
        return items;
      case Value::Kind::kString: {
        std::vector<uint32_t> cps = CodePoints(v.str());
        for (size_t i = 0; i < cps.size(); ++i) items.push_back(Value(FromCodePoints(cps, i, i + 1)));
        return items;
      }
      default: break;
    }
    return LineError(line, "'" + std::string(v.TypeName()) + "' object is not iterable");
  }

  StatusOr<Flow> ExecFor(const Node& n, std::string* out) {
    KVF_ASSIGN_OR_RETURN(Value seq, Eval(*n.expr));
    KVF_ASSIGN_OR_RETURN(std::vector<Value> items, Iterate(seq, n.line));
    auto bind = [&](Scope& scope, const Value& item) -> Status {
      if (n.targets.size() == 1) {
        scope[n.targets[0]] = item;
        return Status::Ok();
      }
      KVF_ASSIGN_OR_RETURN(std::vector<Value> parts, Unpack(item, n.targets.size(), n.line));
      for (size_t i = 0; i < parts.size(); ++i) scope[n.targets[i]] = std::move(parts[i]);
      return Status::Ok();
    };
    if (n.cond) {  // `for x in xs if cond`: filter first; loop.length counts what is left
      std::vector<Value> kept;
      for (const Value& item : items) {
        scopes_.emplace_back();
        Status s = bind(scopes_.back(), item);
        StatusOr<Value> c = s.ok() ? Eval(*n.cond) : StatusOr<Value>(s);
        scopes_.pop_back();
        if (!c.ok()) return c.status();
        if (c->Truthy()) kept.push_back(item);
      }
      items = std::move(kept);
    }
    if (items.empty()) return ExecBlock(n.else_body, out);
    ++loop_depth_;
    const int64_t len = int64_t(items.size());
    for (int64_t i = 0; i < len; ++i) {
      KVF_RETURN_IF_ERROR(Step(n.line));
      scopes_.emplace_back();
      Scope& scope = scopes_.back();
      Status s = bind(scope, items[i]);
      if (!s.ok()) {
        scopes_.pop_back();
        --loop_depth_;
        return s;
      }
      Object loop;
      loop.Set("index", Value(i + 1));
      loop.Set("index0", Value(i));
      loop.Set("revindex", Value(len - i));
      loop.Set("revindex0", Value(len - i - 1));
      loop.Set("first", Value(i == 0));
      loop.Set("last", Value(i == len - 1));
      loop.Set("length", Value(len));
      loop.Set("depth", Value(int64_t(1)));
      loop.Set("depth0", Value(int64_t(0)));
      loop.Set("previtem", i > 0 ? items[i - 1] : Value());
      loop.Set("nextitem", i + 1 < len ? items[i + 1] : Value());
      scope["loop"] = Value(std::move(loop));
      StatusOr<Flow> flow = ExecBlock(n.body, out);
      scopes_.pop_back();
      if (!flow.ok()) {
        --loop_depth_;
        return flow.status();
      }
      if (*flow == Flow::kBreak) break;
    }
    --loop_depth_;
    return Flow::kNormal;
  }

  // ---- expressions ----

  StatusOr<Value> Eval(const Node& n) {
    KVF_RETURN_IF_ERROR(Step(n.line));
    switch (n.kind) {
      case NodeKind::kLiteral: return n.literal;
      case NodeKind::kName: {
        const Value* v = Lookup(n.name);
        return v ? *v : Value();
      }
      case NodeKind::kList:
      case NodeKind::kTuple: {
        Array a;
        for (const NodePtr& c : n.children) {
          KVF_ASSIGN_OR_RETURN(Value v, Eval(*c));
          a.push_back(std::move(v));
        }
        return Value(std::move(a));
      }
      case NodeKind::kDict: {
        Object o;
        for (size_t i = 0; i + 1 < n.children.size(); i += 2) {
          KVF_ASSIGN_OR_RETURN(Value k, Eval(*n.children[i]));
          KVF_ASSIGN_OR_RETURN(Value v, Eval(*n.children[i + 1]));
          if (!k.is_string()) return LineError(n.line, "dict keys must be strings");
          o.Set(k.str(), std::move(v));
        }
        return Value(std::move(o));
      }
      case NodeKind::kGetAttr: {
        KVF_ASSIGN_OR_RETURN(Value obj, Eval(*n.children[0]));
        return GetAttr(obj, n.name, n.line);
      }
      case NodeKind::kGetItem: {
        KVF_ASSIGN_OR_RETURN(Value obj, Eval(*n.children[0]));
        KVF_ASSIGN_OR_RETURN(Value key, Eval(*n.children[1]));
        return GetItem(obj, key, n.line);
      }
      case NodeKind::kSlice: return EvalSlice(n);
      case NodeKind::kCall: return EvalCall(n);
      case NodeKind::kFilter: {
        KVF_ASSIGN_OR_RETURN(Value v, Eval(*n.children[0]));
        std::vector<Value> args;
        std::vector<std::pair<std::string, Value>> kwargs;
        KVF_RETURN_IF_ERROR(EvalArgs(n, 1, &args, &kwargs));
        auto test = [&](const std::string& name, const Value& x, const std::vector<Value>& a) {
          return ApplyTest(name, x, a, n.line);
        };
        return ApplyFilter(n.name, v, args, kwargs, n.line, test);
      }
      case NodeKind::kTest: {
        KVF_ASSIGN_OR_RETURN(Value v, Eval(*n.children[0]));
        std::vector<Value> args;
        std::vector<std::pair<std::string, Value>> kwargs;
        KVF_RETURN_IF_ERROR(EvalArgs(n, 1, &args, &kwargs));
        KVF_ASSIGN_OR_RETURN(bool r, ApplyTest(n.name, v, args, n.line));
        return Value(r != n.negated);
      }
      case NodeKind::kNot: {
        KVF_ASSIGN_OR_RETURN(Value v, Eval(*n.children[0]));
        return Value(!v.Truthy());
      }
      case NodeKind::kAnd: {
        KVF_ASSIGN_OR_RETURN(Value a, Eval(*n.children[0]));
        if (!a.Truthy()) return a;
        return Eval(*n.children[1]);
      }
      case NodeKind::kOr: {
        KVF_ASSIGN_OR_RETURN(Value a, Eval(*n.children[0]));
        if (a.Truthy()) return a;
        return Eval(*n.children[1]);
      }
      case NodeKind::kCondExpr: {
        KVF_ASSIGN_OR_RETURN(Value c, Eval(*n.children[0]));
        if (c.Truthy()) return Eval(*n.children[1]);
        if (!n.children[2]) return Value();
        return Eval(*n.children[2]);
      }
      case NodeKind::kUnary: {
        KVF_ASSIGN_OR_RETURN(Value v, Eval(*n.children[0]));
        if (!v.is_number() && !v.is_bool()) return LineError(n.line, "bad operand type for unary " + n.name);
        if (n.name == "+") return v.is_bool() ? Value(v.int_value()) : v;
        if (v.is_float()) return Value(-v.number());
        return Value(-v.int_value());
      }
      case NodeKind::kBinary: return EvalBinary(n);
      default: return LineError(n.line, "not an expression");
    }
  }

  StatusOr<Value> GetAttr(const Value& obj, const std::string& name, int line) {
    if (obj.is_undefined()) return LineError(line, "'" + name + "' of an undefined value");
    if (obj.is_object()) {
      const Value* v = obj.object().Find(name);
      return v ? *v : Value();
    }
    return Value();
  }

  StatusOr<Value> GetItem(const Value& obj, const Value& key, int line) {
    if (obj.is_undefined()) return LineError(line, "subscript of an undefined value");
    if (obj.is_object()) {
      if (!key.is_string()) return Value();
      const Value* v = obj.object().Find(key.str());
      return v ? *v : Value();
    }
    if ((obj.is_array() || obj.is_string()) && (key.is_int() || key.is_bool())) {
      int64_t i = key.int_value();
      if (obj.is_array()) {
        int64_t size = int64_t(obj.array().size());
        if (i < 0) i += size;
        if (i < 0 || i >= size) return Value();
        return obj.array()[size_t(i)];
      }
      std::vector<uint32_t> cps = CodePoints(obj.str());
      int64_t size = int64_t(cps.size());
      if (i < 0) i += size;
      if (i < 0 || i >= size) return Value();
      return Value(FromCodePoints(cps, size_t(i), size_t(i) + 1));
    }
    return Value();
  }

  StatusOr<Value> EvalSlice(const Node& n) {
    KVF_ASSIGN_OR_RETURN(Value obj, Eval(*n.children[0]));
    int64_t bounds[3] = {0, 0, 1};
    bool given[3] = {false, false, false};
    for (int k = 0; k < 3; ++k) {
      if (!n.children[k + 1]) continue;
      KVF_ASSIGN_OR_RETURN(Value v, Eval(*n.children[k + 1]));
      if (v.is_none()) continue;
      if (!v.is_int()) return LineError(n.line, "slice indices must be integers");
      bounds[k] = v.int_value();
      given[k] = true;
    }
    int64_t step = given[2] ? bounds[2] : 1;
    if (step == 0) return LineError(n.line, "slice step cannot be zero");
    std::vector<uint32_t> cps;
    int64_t len;
    if (obj.is_array()) {
      len = int64_t(obj.array().size());
    } else if (obj.is_string()) {
      cps = CodePoints(obj.str());
      len = int64_t(cps.size());
    } else if (obj.is_undefined()) {
      return LineError(n.line, "slice of an undefined value");
    } else {
      return LineError(n.line, "'" + std::string(obj.TypeName()) + "' object is not subscriptable");
    }
    // Python's slice.indices().
    auto adjust = [&](int64_t v, bool is_given, int64_t def) {
      if (!is_given) return def;
      if (v < 0) {
        v += len;
        if (v < 0) v = step < 0 ? -1 : 0;
      } else if (v >= len) {
        v = step < 0 ? len - 1 : len;
      }
      return v;
    };
    int64_t start = adjust(bounds[0], given[0], step < 0 ? len - 1 : 0);
    int64_t stop = adjust(bounds[1], given[1], step < 0 ? -1 : len);
    std::vector<int64_t> idx;
    for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) idx.push_back(i);
    if (obj.is_array()) {
      Array a;
      for (int64_t i : idx) a.push_back(obj.array()[size_t(i)]);
      return Value(std::move(a));
    }
    std::string s;
    for (int64_t i : idx) s += FromCodePoints(cps, size_t(i), size_t(i) + 1);
    return Value(std::move(s));
  }

  Status EvalArgs(const Node& n, size_t first, std::vector<Value>* args,
                  std::vector<std::pair<std::string, Value>>* kwargs) {
    size_t positional_end = first + n.num_positional;
    for (size_t i = first; i < n.children.size(); ++i) {
      KVF_ASSIGN_OR_RETURN(Value v, Eval(*n.children[i]));
      if (i < positional_end) {
        args->push_back(std::move(v));
      } else {
        kwargs->emplace_back(n.kwarg_names[i - positional_end], std::move(v));
      }
    }
    return Status::Ok();
  }

  StatusOr<Value> EvalCall(const Node& n) {
    std::vector<Value> args;
    std::vector<std::pair<std::string, Value>> kwargs;
    const Node& callee = *n.children[0];
    if (callee.kind == NodeKind::kGetAttr) {
      KVF_ASSIGN_OR_RETURN(Value obj, Eval(*callee.children[0]));
      KVF_RETURN_IF_ERROR(EvalArgs(n, 1, &args, &kwargs));
      if (obj.is_object() && !obj.object().is_namespace) {
        const Value* member = obj.object().Find(callee.name);
        if (member && member->is_macro() && callee.name != "items" && callee.name != "get" &&
            callee.name != "keys" && callee.name != "values") {
          return CallMacro(*member->macro(), args, kwargs, n.line);
        }
      }
      if (obj.is_undefined()) return LineError(n.line, "'" + callee.name + "' of an undefined value");
      return CallMethod(obj, callee.name, args, kwargs, n.line);
    }
    KVF_RETURN_IF_ERROR(EvalArgs(n, 1, &args, &kwargs));
    if (callee.kind == NodeKind::kName) {
      const Value* v = Lookup(callee.name);
      if (v && v->is_macro()) return CallMacro(*v->macro(), args, kwargs, n.line);
      if (v == nullptr) return CallBuiltin(callee.name, args, kwargs, n.line);
    }
    KVF_ASSIGN_OR_RETURN(Value f, Eval(callee));
    if (f.is_macro()) return CallMacro(*f.macro(), args, kwargs, n.line);
    if (f.is_undefined()) return LineError(n.line, "call of an undefined value");
    return LineError(n.line, "'" + std::string(f.TypeName()) + "' object is not callable");
  }

  StatusOr<Value> CallBuiltin(const std::string& name, const std::vector<Value>& args,
                              const std::vector<std::pair<std::string, Value>>& kwargs, int line) {
    if (name == "raise_exception") {
      std::string msg = args.empty() ? "" : args[0].ToString();
      return InvalidArgumentError("chat template raised an exception: " + msg);
    }
    if (name == "namespace" || name == "dict") {
      Object o;
      o.is_namespace = name == "namespace";
      for (const Value& a : args) {
        if (!a.is_object()) return LineError(line, name + "() takes keyword arguments or a dict");
        for (const auto& [k, v] : a.object().items) o.Set(k, v);
      }
      for (const auto& [k, v] : kwargs) o.Set(k, v);
      return Value(std::move(o));
    }
    if (name == "range") {
      int64_t r[3] = {0, 0, 1};
      if (args.empty() || args.size() > 3) return LineError(line, "range() takes 1 to 3 arguments");
      for (const Value& a : args)
        if (!a.is_int()) return LineError(line, "range() arguments must be integers");
      if (args.size() == 1) {
        r[1] = args[0].int_value();
      } else {
        r[0] = args[0].int_value();
        r[1] = args[1].int_value();
        if (args.size() == 3) r[2] = args[2].int_value();
      }
      if (r[2] == 0) return LineError(line, "range() step must not be zero");
      Array a;
      for (int64_t i = r[0]; r[2] > 0 ? i < r[1] : i > r[1]; i += r[2]) {
        KVF_RETURN_IF_ERROR(Step(line));
        a.push_back(Value(i));
      }
      return Value(std::move(a));
    }
    if (name == "strftime_now") {
      if (args.size() != 1 || !args[0].is_string()) return LineError(line, "strftime_now(format) takes one string");
      std::time_t now = std::time(nullptr);
      std::tm tm;
      localtime_r(&now, &tm);
      char buf[256];
      size_t len = std::strftime(buf, sizeof(buf), args[0].str().c_str(), &tm);
      return Value(std::string(buf, len));
    }
    return UnimplementedError("template line " + std::to_string(line) + ": the function '" + name +
                              "' is not defined (kvferry's Jinja subset)");
  }

  StatusOr<Value> CallMacro(const Macro& m, const std::vector<Value>& args,
                            const std::vector<std::pair<std::string, Value>>& kwargs, int line) {
    if (args.size() > m.params.size()) return LineError(line, "macro '" + m.name + "' takes fewer arguments");
    if (++call_depth_ > 64) return ResourceExhaustedError("macro recursion too deep");
    // A macro sees its arguments and the template's top-level names, not the caller's locals.
    std::vector<Scope> saved;
    saved.swap(scopes_);
    scopes_.push_back(saved[0]);
    scopes_.emplace_back();
    Scope& scope = scopes_.back();
    Status status;
    for (size_t i = 0; i < m.params.size() && status.ok(); ++i) {
      if (i < args.size()) {
        scope[m.params[i]] = args[i];
        continue;
      }
      auto kw = std::find_if(kwargs.begin(), kwargs.end(), [&](const auto& p) { return p.first == m.params[i]; });
      if (kw != kwargs.end()) {
        scope[m.params[i]] = kw->second;
      } else if (m.defaults[i] != nullptr) {
        StatusOr<Value> d = Eval(*m.defaults[i]);
        if (d.ok()) {
          scopes_.back()[m.params[i]] = *d;
        } else {
          status = d.status();
        }
      } else {
        scopes_.back()[m.params[i]] = Value();
      }
    }
    std::string captured;
    int saved_loop_depth = loop_depth_;
    loop_depth_ = 0;
    if (status.ok()) {
      StatusOr<Flow> flow = ExecBlock(*m.body, &captured);
      if (!flow.ok()) status = flow.status();
    }
    loop_depth_ = saved_loop_depth;
    // Top-level assignments made inside the macro do not leak out; restore the caller's scopes.
    scopes_.swap(saved);
    --call_depth_;
    if (!status.ok()) return status;
    return Value(std::move(captured));
  }

  StatusOr<Value> EvalBinary(const Node& n) {
    KVF_ASSIGN_OR_RETURN(Value a, Eval(*n.children[0]));
    KVF_ASSIGN_OR_RETURN(Value b, Eval(*n.children[1]));
    const std::string& op = n.name;
    if (op == "==") return Value(a.Equals(b));
    if (op == "!=") return Value(!a.Equals(b));
    if (op == "~") {
      std::string s = a.ToString() + b.ToString();
      if (s.size() > limits_.max_output_bytes) return ResourceExhaustedError("string too large");
      return Value(std::move(s));
    }
    if (op == "in" || op == "not in") {
      bool found = false;
      if (b.is_string()) {
        if (!a.is_string()) return LineError(n.line, "'in <string>' requires a string as left operand");
        found = b.str().find(a.str()) != std::string::npos;
      } else if (b.is_array()) {
        for (const Value& x : b.array())
          if (x.Equals(a)) found = true;
      } else if (b.is_object()) {
        found = a.is_string() && b.object().Find(a.str()) != nullptr;
      } else if (!b.is_undefined()) {
        return LineError(n.line, "argument of type '" + std::string(b.TypeName()) + "' is not iterable");
      }
      return Value(op == "in" ? found : !found);
    }
    if (a.is_undefined() || b.is_undefined()) {
      return LineError(n.line, "undefined value in '" + op + "' operation");
    }
    bool numeric = (a.is_number() || a.is_bool()) && (b.is_number() || b.is_bool());
    if (op == "<" || op == ">" || op == "<=" || op == ">=") {
      int cmp;
      if (numeric) {
        double x = a.number(), y = b.number();
        if (!a.is_float() && !b.is_float()) {
          cmp = a.int_value() < b.int_value() ? -1 : a.int_value() > b.int_value();
        } else {
          cmp = x < y ? -1 : x > y;
        }
      } else if (a.is_string() && b.is_string()) {
        cmp = a.str().compare(b.str());
        cmp = cmp < 0 ? -1 : cmp > 0;
      } else {
        return LineError(n.line, "'" + op + "' not supported between '" + std::string(a.TypeName()) + "' and '" +
                                     std::string(b.TypeName()) + "'");
      }
      bool r = op == "<" ? cmp < 0 : op == ">" ? cmp > 0 : op == "<=" ? cmp <= 0 : cmp >= 0;
      return Value(r);
    }
    if (op == "+") {
      if (a.is_string() && b.is_string()) {
        if (a.str().size() + b.str().size() > limits_.max_output_bytes) return ResourceExhaustedError("string too large");
        return Value(a.str() + b.str());
      }
      if (a.is_array() && b.is_array()) {
        Array r = a.array();
        r.insert(r.end(), b.array().begin(), b.array().end());
        return Value(std::move(r));
      }
    }
    if (op == "*" && ((a.is_string() || a.is_array()) && b.is_int())) return Repeat(a, b.int_value(), n.line);
    if (op == "*" && ((b.is_string() || b.is_array()) && a.is_int())) return Repeat(b, a.int_value(), n.line);
    if (!numeric) {
      return LineError(n.line, "unsupported operand types for " + op + ": '" + std::string(a.TypeName()) + "' and '" +
                                   std::string(b.TypeName()) + "'");
    }
    bool ints = !a.is_float() && !b.is_float();
    int64_t x = a.int_value(), y = b.int_value();
    double fx = a.number(), fy = b.number();
    if (op == "+") return ints ? Value(int64_t(uint64_t(x) + uint64_t(y))) : Value(fx + fy);
    if (op == "-") return ints ? Value(int64_t(uint64_t(x) - uint64_t(y))) : Value(fx - fy);
    if (op == "*") return ints ? Value(int64_t(uint64_t(x) * uint64_t(y))) : Value(fx * fy);
    if (op == "/") {
      if (fy == 0) return LineError(n.line, "division by zero");
      return Value(fx / fy);
    }
    if (op == "//" || op == "%") {
      if (fy == 0) return LineError(n.line, "integer division or modulo by zero");
      if (ints) {
        if (y == -1 && x == INT64_MIN) return LineError(n.line, "integer overflow");
        int64_t q = x / y, r = x % y;
        if (r != 0 && ((r < 0) != (y < 0))) {
          --q;
          r += y;
        }
        return op == "//" ? Value(q) : Value(r);
      }
      double q = std::floor(fx / fy);
      return op == "//" ? Value(q) : Value(fx - q * fy);
    }
    if (op == "**") {
      if (ints && y >= 0) {
        int64_t r = 1;
        for (int64_t i = 0; i < y && i < 64; ++i) r = int64_t(uint64_t(r) * uint64_t(x));
        return Value(r);
      }
      return Value(std::pow(fx, fy));
    }
    return LineError(n.line, "unknown operator " + op);
  }

  StatusOr<Value> Repeat(const Value& v, int64_t times, int line) {
    if (times <= 0) return v.is_string() ? Value(std::string()) : Value(Array{});
    size_t unit = v.is_string() ? v.str().size() : v.array().size();
    if (unit * uint64_t(times) > limits_.max_output_bytes) return ResourceExhaustedError("repetition too large");
    if (v.is_string()) {
      std::string s;
      for (int64_t i = 0; i < times; ++i) s += v.str();
      return Value(std::move(s));
    }
    Array a;
    for (int64_t i = 0; i < times; ++i) a.insert(a.end(), v.array().begin(), v.array().end());
    return Value(std::move(a));
  }

  const Template::Limits& limits_;
  std::vector<Scope> scopes_;
  std::string out_;
  uint64_t steps_ = 0;
  int loop_depth_ = 0;
  int call_depth_ = 0;
};

}  // namespace

StatusOr<std::string> Template::Render(const Value& globals, const Limits& limits) const {
  Renderer r(globals, limits);
  return r.Run(body_);
}

}  // namespace kvferry::tokenizer::jinja
