// Filters, tests and methods of the Jinja subset, with Python/Jinja2 semantics.
#include <utf8proc.h>

#include <algorithm>
#include <cmath>
#include <functional>

#include "kvferry/tokenizer/jinja.h"
#include "kvferry/tokenizer/unicode.h"

namespace kvferry::tokenizer::jinja {

using Kwargs = std::vector<std::pair<std::string, Value>>;
using TestFn = std::function<StatusOr<bool>(const std::string&, const Value&, const std::vector<Value>&)>;

std::vector<uint32_t> CodePoints(std::string_view s) {
  std::vector<uint32_t> out;
  size_t pos = 0;
  while (pos < s.size()) out.push_back(DecodeUtf8(s, &pos));
  return out;
}

std::string FromCodePoints(const std::vector<uint32_t>& cps, size_t begin, size_t end) {
  std::string s;
  for (size_t i = begin; i < end && i < cps.size(); ++i) AppendUtf8(cps[i], &s);
  return s;
}

namespace {

Status Err(int line, const std::string& what) {
  return InvalidArgumentError("template line " + std::to_string(line) + ": " + what);
}
Status Unsupported(int line, const std::string& what) {
  return UnimplementedError("template line " + std::to_string(line) + ": " + what +
                            " is not supported by kvferry's Jinja subset");
}

// Python str.isspace() characters.
bool IsPySpace(uint32_t c) { return IsUnicodeWhitespace(c) || (c >= 0x1C && c <= 0x1F); }

std::string Strip(const std::string& s, const Value* chars, bool left, bool right) {
  std::vector<uint32_t> cps = CodePoints(s);
  std::vector<uint32_t> set;
  bool custom = chars != nullptr && chars->is_string();
  if (custom) set = CodePoints(chars->str());
  auto strip_it = [&](uint32_t c) {
    return custom ? std::find(set.begin(), set.end(), c) != set.end() : IsPySpace(c);
  };
  size_t b = 0, e = cps.size();
  if (left)
    while (b < e && strip_it(cps[b])) ++b;
  if (right)
    while (e > b && strip_it(cps[e - 1])) --e;
  return FromCodePoints(cps, b, e);
}

std::string MapCase(const std::string& s, int mode) {  // 0 lower, 1 upper
  std::string out;
  size_t pos = 0;
  while (pos < s.size()) {
    uint32_t c = DecodeUtf8(s, &pos);
    AppendUtf8(uint32_t(mode == 0 ? utf8proc_tolower(int32_t(c)) : utf8proc_toupper(int32_t(c))), &out);
  }
  return out;
}

bool IsCased(uint32_t c) { return utf8proc_tolower(int32_t(c)) != int32_t(c) || utf8proc_toupper(int32_t(c)) != int32_t(c); }

std::string Capitalize(const std::string& s) {
  std::vector<uint32_t> cps = CodePoints(s);
  std::string out;
  for (size_t i = 0; i < cps.size(); ++i) {
    AppendUtf8(uint32_t(i == 0 ? utf8proc_toupper(int32_t(cps[i])) : utf8proc_tolower(int32_t(cps[i]))), &out);
  }
  return out;
}

std::string Title(const std::string& s) {  // Python str.title()
  std::string out;
  bool prev_cased = false;
  size_t pos = 0;
  while (pos < s.size()) {
    uint32_t c = DecodeUtf8(s, &pos);
    uint32_t m = uint32_t(prev_cased ? utf8proc_tolower(int32_t(c)) : utf8proc_toupper(int32_t(c)));
    AppendUtf8(m, &out);
    prev_cased = IsCased(c);
  }
  return out;
}

StatusOr<Array> Split(const std::string& s, const Value* sep, int64_t maxsplit, int line) {
  Array out;
  if (sep == nullptr || sep->is_none()) {
    std::vector<uint32_t> cps = CodePoints(s);
    size_t i = 0;
    while (i < cps.size()) {
      while (i < cps.size() && IsPySpace(cps[i])) ++i;
      if (i >= cps.size()) break;
      size_t j = i;
      if (maxsplit >= 0 && int64_t(out.size()) >= maxsplit) {
        size_t e = cps.size();
        while (e > i && IsPySpace(cps[e - 1])) --e;
        out.push_back(Value(FromCodePoints(cps, i, e)));
        break;
      }
      while (j < cps.size() && !IsPySpace(cps[j])) ++j;
      out.push_back(Value(FromCodePoints(cps, i, j)));
      i = j;
    }
    return out;
  }
  if (!sep->is_string()) return Err(line, "split() separator must be a string");
  const std::string& d = sep->str();
  if (d.empty()) return Err(line, "empty separator");
  size_t pos = 0;
  while (true) {
    if (maxsplit >= 0 && int64_t(out.size()) >= maxsplit) {
      out.push_back(Value(s.substr(pos)));
      break;
    }
    size_t f = s.find(d, pos);
    if (f == std::string::npos) {
      out.push_back(Value(s.substr(pos)));
      break;
    }
    out.push_back(Value(s.substr(pos, f - pos)));
    pos = f + d.size();
  }
  return out;
}

std::string Replace(const std::string& s, const std::string& from, const std::string& to, int64_t count) {
  if (from.empty()) {
    // Python inserts `to` between characters; rare, keep it simple and faithful.
    std::vector<uint32_t> cps = CodePoints(s);
    std::string out;
    int64_t done = 0;
    for (size_t i = 0; i <= cps.size(); ++i) {
      if (count < 0 || done < count) {
        out += to;
        ++done;
      }
      if (i < cps.size()) AppendUtf8(cps[i], &out);
    }
    return out;
  }
  std::string out;
  size_t pos = 0;
  int64_t done = 0;
  while (count < 0 || done < count) {
    size_t f = s.find(from, pos);
    if (f == std::string::npos) break;
    out.append(s, pos, f - pos);
    out += to;
    pos = f + from.size();
    ++done;
  }
  out.append(s, pos, std::string::npos);
  return out;
}

const Value* Kwarg(const Kwargs& kwargs, std::string_view name) {
  for (const auto& [k, v] : kwargs)
    if (k == name) return &v;
  return nullptr;
}

// The i-th positional argument, or the keyword one, or null.
const Value* Arg(const std::vector<Value>& args, size_t i, const Kwargs& kwargs, std::string_view name) {
  if (i < args.size()) return &args[i];
  return Kwarg(kwargs, name);
}

StatusOr<size_t> Length(const Value& v, int line) {
  switch (v.kind()) {
    case Value::Kind::kString: return CodePointCount(v.str());
    case Value::Kind::kArray: return v.array().size();
    case Value::Kind::kObject: return v.object().items.size();
    case Value::Kind::kUndefined: return size_t(0);
    default: return Err(line, "object of type '" + std::string(v.TypeName()) + "' has no len()");
  }
}

StatusOr<Array> ToList(const Value& v, int line) {
  Array out;
  switch (v.kind()) {
    case Value::Kind::kArray: return v.array();
    case Value::Kind::kString: {
      std::vector<uint32_t> cps = CodePoints(v.str());
      for (size_t i = 0; i < cps.size(); ++i) out.push_back(Value(FromCodePoints(cps, i, i + 1)));
      return out;
    }
    case Value::Kind::kObject:
      for (const auto& kv : v.object().items) out.push_back(Value(kv.first));
      return out;
    case Value::Kind::kUndefined: return out;
    default: return Err(line, "'" + std::string(v.TypeName()) + "' object is not iterable");
  }
}

// Attribute lookup with dotted paths ("function.name") as Jinja's attribute= arguments allow.
Value GetPath(const Value& v, const std::string& path) {
  Value cur = v;
  size_t pos = 0;
  while (pos <= path.size()) {
    size_t dot = path.find('.', pos);
    std::string part = path.substr(pos, dot == std::string::npos ? std::string::npos : dot - pos);
    if (cur.is_object()) {
      const Value* x = cur.object().Find(part);
      cur = x ? *x : Value();
    } else if (cur.is_array() && !part.empty() && std::all_of(part.begin(), part.end(), ::isdigit)) {
      size_t i = std::stoul(part);
      cur = i < cur.array().size() ? cur.array()[i] : Value();
    } else {
      return Value();
    }
    if (dot == std::string::npos) break;
    pos = dot + 1;
  }
  return cur;
}

int Compare(const Value& a, const Value& b, bool case_sensitive) {
  if ((a.is_number() || a.is_bool()) && (b.is_number() || b.is_bool())) {
    return a.number() < b.number() ? -1 : a.number() > b.number();
  }
  if (a.is_string() && b.is_string()) {
    std::string x = case_sensitive ? a.str() : MapCase(a.str(), 0);
    std::string y = case_sensitive ? b.str() : MapCase(b.str(), 0);
    return x < y ? -1 : x > y;
  }
  return 0;
}

std::string HtmlEscape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&#34;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

}  // namespace

StatusOr<bool> ApplyTest(const std::string& name, const Value& v, const std::vector<Value>& args, int line) {
  auto need = [&](size_t n) -> Status {
    if (args.size() < n) return Err(line, "test '" + name + "' needs an argument");
    return Status::Ok();
  };
  if (name == "defined") return !v.is_undefined();
  if (name == "undefined") return v.is_undefined();
  if (name == "none") return v.is_none();
  if (name == "string") return v.is_string();
  if (name == "number") return v.is_number() || v.is_bool();
  if (name == "integer") return v.is_int();
  if (name == "float") return v.is_float();
  if (name == "boolean") return v.is_bool();
  if (name == "true") return v.is_bool() && v.bool_value();
  if (name == "false") return v.is_bool() && !v.bool_value();
  if (name == "mapping") return v.is_object() && !v.object().is_namespace;
  if (name == "iterable") return v.is_array() || v.is_string() || (v.is_object() && !v.object().is_namespace) || v.is_undefined();
  if (name == "sequence") return v.is_array() || v.is_string() || (v.is_object() && !v.object().is_namespace);
  if (name == "callable") return v.is_macro();
  if (name == "lower") return v.is_string() && MapCase(v.str(), 0) == v.str();
  if (name == "upper") return v.is_string() && MapCase(v.str(), 1) == v.str();
  if (name == "odd" || name == "even") {
    if (!v.is_int()) return Err(line, "test '" + name + "' needs an integer");
    bool odd = (v.int_value() % 2) != 0;
    return name == "odd" ? odd : !odd;
  }
  if (name == "divisibleby") {
    KVF_RETURN_IF_ERROR(need(1));
    if (!v.is_int() || !args[0].is_int() || args[0].int_value() == 0) return Err(line, "bad divisibleby operands");
    return v.int_value() % args[0].int_value() == 0;
  }
  if (name == "equalto" || name == "eq" || name == "==" || name == "sameas") {
    KVF_RETURN_IF_ERROR(need(1));
    return v.Equals(args[0]);
  }
  if (name == "ne" || name == "!=") {
    KVF_RETURN_IF_ERROR(need(1));
    return !v.Equals(args[0]);
  }
  if (name == "lt" || name == "<" || name == "le" || name == "<=" || name == "gt" || name == ">" || name == "ge" ||
      name == ">=") {
    KVF_RETURN_IF_ERROR(need(1));
    bool ok = ((v.is_number() || v.is_bool()) && (args[0].is_number() || args[0].is_bool())) ||
              (v.is_string() && args[0].is_string());
    if (!ok) return Err(line, "test '" + name + "' on incomparable types");
    int c = Compare(v, args[0], true);
    if (name == "lt" || name == "<") return c < 0;
    if (name == "le" || name == "<=") return c <= 0;
    if (name == "gt" || name == ">") return c > 0;
    return c >= 0;
  }
  if (name == "in") {
    KVF_RETURN_IF_ERROR(need(1));
    const Value& c = args[0];
    if (c.is_string()) return v.is_string() && c.str().find(v.str()) != std::string::npos;
    if (c.is_array()) {
      for (const Value& x : c.array())
        if (x.Equals(v)) return true;
      return false;
    }
    if (c.is_object()) return v.is_string() && c.object().Find(v.str()) != nullptr;
    return Err(line, "test 'in' needs a container");
  }
  return Unsupported(line, "the test '" + name + "'");
}

StatusOr<Value> ApplyFilter(const std::string& name, const Value& v, const std::vector<Value>& args,
                            const Kwargs& kwargs, int line, const TestFn& test) {
  if (name == "safe") return v;
  if (name == "string") return Value(v.ToString());
  if (name == "trim") {
    if (!v.is_string() && !v.is_undefined()) return Value(Strip(v.ToString(), Arg(args, 0, kwargs, "chars"), true, true));
    return Value(Strip(v.ToString(), Arg(args, 0, kwargs, "chars"), true, true));
  }
  if (name == "length" || name == "count") {
    KVF_ASSIGN_OR_RETURN(size_t n, Length(v, line));
    return Value(int64_t(n));
  }
  if (name == "tojson") {
    const Value* indent = Arg(args, 0, kwargs, "indent");
    const Value* sort_keys = Kwarg(kwargs, "sort_keys");
    const Value* ensure_ascii = Kwarg(kwargs, "ensure_ascii");
    const Value* separators = Kwarg(kwargs, "separators");
    if ((ensure_ascii && ensure_ascii->Truthy()) || (separators && !separators->is_none())) {
      return Unsupported(line, "tojson(ensure_ascii=True) or tojson(separators=...)");
    }
    int n = -1;
    if (indent && !indent->is_none()) {
      if (!indent->is_int() || indent->int_value() < 0 || indent->int_value() > 64) return Err(line, "bad tojson indent");
      n = int(indent->int_value());
    }
    KVF_ASSIGN_OR_RETURN(std::string json, v.ToJson(n, sort_keys && sort_keys->Truthy()));
    return Value(std::move(json));
  }
  if (name == "lower" || name == "upper") return Value(MapCase(v.ToString(), name == "lower" ? 0 : 1));
  if (name == "capitalize") return Value(Capitalize(v.ToString()));
  if (name == "title") return Value(Title(v.ToString()));
  if (name == "e" || name == "escape") return Value(HtmlEscape(v.ToString()));
  if (name == "default" || name == "d") {
    const Value* def = Arg(args, 0, kwargs, "default_value");
    const Value* boolean = Arg(args, 1, kwargs, "boolean");
    bool use_default = v.is_undefined() || (boolean && boolean->Truthy() && !v.Truthy());
    if (use_default) return def ? *def : Value(std::string());
    return v;
  }
  if (name == "int") {
    const Value* def = Arg(args, 0, kwargs, "default");
    if (v.is_int() || v.is_bool()) return Value(v.int_value());
    if (v.is_float()) return Value(int64_t(v.number()));
    if (v.is_string()) {
      std::string s = Strip(v.str(), nullptr, true, true);
      char* end = nullptr;
      long long x = std::strtoll(s.c_str(), &end, 10);
      if (!s.empty() && end && *end == '\0') return Value(int64_t(x));
      double f = std::strtod(s.c_str(), &end);
      if (!s.empty() && end && *end == '\0' && std::isfinite(f)) return Value(int64_t(f));
    }
    return def ? *def : Value(int64_t(0));
  }
  if (name == "float") {
    const Value* def = Arg(args, 0, kwargs, "default");
    if (v.is_number() || v.is_bool()) return Value(v.number());
    if (v.is_string()) {
      std::string s = Strip(v.str(), nullptr, true, true);
      char* end = nullptr;
      double f = std::strtod(s.c_str(), &end);
      if (!s.empty() && end && *end == '\0') return Value(f);
    }
    return def ? *def : Value(0.0);
  }
  if (name == "abs") {
    if (v.is_float()) return Value(std::fabs(v.number()));
    if (v.is_int() || v.is_bool()) return Value(v.int_value() < 0 ? -v.int_value() : v.int_value());
    return Err(line, "bad operand type for abs()");
  }
  if (name == "replace") {
    if (args.size() < 2 || !args[0].is_string() || !args[1].is_string()) return Err(line, "replace(old, new[, count])");
    int64_t count = args.size() > 2 && args[2].is_int() ? args[2].int_value() : -1;
    return Value(Replace(v.ToString(), args[0].str(), args[1].str(), count));
  }
  if (name == "first" || name == "last") {
    KVF_ASSIGN_OR_RETURN(Array items, ToList(v, line));
    if (items.empty()) return Value();
    return name == "first" ? items.front() : items.back();
  }
  if (name == "list") {
    KVF_ASSIGN_OR_RETURN(Array items, ToList(v, line));
    return Value(std::move(items));
  }
  if (name == "reverse") {
    if (v.is_string()) {
      std::vector<uint32_t> cps = CodePoints(v.str());
      std::reverse(cps.begin(), cps.end());
      return Value(FromCodePoints(cps, 0, cps.size()));
    }
    KVF_ASSIGN_OR_RETURN(Array items, ToList(v, line));
    std::reverse(items.begin(), items.end());
    return Value(std::move(items));
  }
  if (name == "items") {
    Array out;
    if (v.is_undefined()) return Value(std::move(out));
    if (!v.is_object()) return Err(line, "items filter needs a mapping");
    for (const auto& [k, x] : v.object().items) out.push_back(Value(Array{Value(k), x}));
    return Value(std::move(out));
  }
  if (name == "join") {
    KVF_ASSIGN_OR_RETURN(Array items, ToList(v, line));
    const Value* sep = Arg(args, 0, kwargs, "d");
    const Value* attribute = Arg(args, 1, kwargs, "attribute");
    std::string s;
    for (size_t i = 0; i < items.size(); ++i) {
      if (i) s += sep ? sep->ToString() : "";
      s += attribute ? GetPath(items[i], attribute->ToString()).ToString() : items[i].ToString();
    }
    return Value(std::move(s));
  }
  if (name == "select" || name == "reject" || name == "selectattr" || name == "rejectattr") {
    bool attr = name == "selectattr" || name == "rejectattr";
    bool keep_matching = name == "select" || name == "selectattr";
    KVF_ASSIGN_OR_RETURN(Array items, ToList(v, line));
    size_t next = 0;
    std::string attribute;
    if (attr) {
      if (args.empty() || !args[0].is_string()) return Err(line, name + " needs an attribute name");
      attribute = args[0].str();
      next = 1;
    }
    std::string test_name;
    if (next < args.size()) {
      if (!args[next].is_string()) return Err(line, name + " needs a test name");
      test_name = args[next].str();
      ++next;
    }
    std::vector<Value> test_args(args.begin() + long(std::min(next, args.size())), args.end());
    Array out;
    for (const Value& item : items) {
      Value subject = attr ? GetPath(item, attribute) : item;
      bool r;
      if (test_name.empty()) {
        r = subject.Truthy();
      } else {
        KVF_ASSIGN_OR_RETURN(r, test(test_name, subject, test_args));
      }
      if (r == keep_matching) out.push_back(item);
    }
    return Value(std::move(out));
  }
  if (name == "map") {
    KVF_ASSIGN_OR_RETURN(Array items, ToList(v, line));
    Array out;
    if (const Value* attribute = Kwarg(kwargs, "attribute")) {
      const Value* def = Kwarg(kwargs, "default");
      for (const Value& item : items) {
        Value x = GetPath(item, attribute->ToString());
        out.push_back(x.is_undefined() && def ? *def : x);
      }
      return Value(std::move(out));
    }
    if (args.empty() || !args[0].is_string()) return Err(line, "map needs attribute= or a filter name");
    std::vector<Value> rest(args.begin() + 1, args.end());
    for (const Value& item : items) {
      KVF_ASSIGN_OR_RETURN(Value x, ApplyFilter(args[0].str(), item, rest, {}, line, test));
      out.push_back(std::move(x));
    }
    return Value(std::move(out));
  }
  if (name == "unique") {
    KVF_ASSIGN_OR_RETURN(Array items, ToList(v, line));
    Array out;
    for (const Value& x : items) {
      bool seen = false;
      for (const Value& y : out) seen = seen || y.Equals(x);
      if (!seen) out.push_back(x);
    }
    return Value(std::move(out));
  }
  if (name == "sort") {
    KVF_ASSIGN_OR_RETURN(Array items, ToList(v, line));
    const Value* reverse = Arg(args, 0, kwargs, "reverse");
    const Value* case_sensitive = Arg(args, 1, kwargs, "case_sensitive");
    const Value* attribute = Arg(args, 2, kwargs, "attribute");
    bool cs = case_sensitive && case_sensitive->Truthy();
    std::stable_sort(items.begin(), items.end(), [&](const Value& a, const Value& b) {
      Value x = attribute ? GetPath(a, attribute->ToString()) : a;
      Value y = attribute ? GetPath(b, attribute->ToString()) : b;
      return Compare(x, y, cs) < 0;
    });
    if (reverse && reverse->Truthy()) std::reverse(items.begin(), items.end());
    return Value(std::move(items));
  }
  if (name == "indent") {
    const Value* width = Arg(args, 0, kwargs, "width");
    const Value* first = Arg(args, 1, kwargs, "first");
    const Value* blank = Arg(args, 2, kwargs, "blank");
    std::string pad = width ? (width->is_int() ? std::string(size_t(std::clamp<int64_t>(width->int_value(), 0, 256)), ' ')
                                               : width->ToString())
                            : std::string(4, ' ');
    std::string s = v.ToString(), out;
    size_t pos = 0;
    bool first_line = true;
    while (pos <= s.size()) {
      size_t nl = s.find('\n', pos);
      std::string line_text = s.substr(pos, nl == std::string::npos ? std::string::npos : nl - pos);
      bool indent_it = first_line ? (first && first->Truthy()) : (!line_text.empty() || (blank && blank->Truthy()));
      if (indent_it) out += pad;
      out += line_text;
      if (nl == std::string::npos) break;
      out += '\n';
      pos = nl + 1;
      first_line = false;
    }
    return Value(std::move(out));
  }
  return Unsupported(line, "the filter '" + name + "'");
}

StatusOr<Value> CallMethod(const Value& obj, const std::string& name, const std::vector<Value>& args,
                           const Kwargs& kwargs, int line) {
  if (obj.is_string()) {
    const std::string& s = obj.str();
    if (name == "startswith" || name == "endswith") {
      if (args.empty()) return Err(line, name + "() needs an argument");
      std::vector<Value> options = args[0].is_array() ? args[0].array() : std::vector<Value>{args[0]};
      for (const Value& o : options) {
        if (!o.is_string()) return Err(line, name + "() needs strings");
        const std::string& p = o.str();
        bool hit = p.size() <= s.size() &&
                   (name == "startswith" ? s.compare(0, p.size(), p) == 0 : s.compare(s.size() - p.size(), p.size(), p) == 0);
        if (hit) return Value(true);
      }
      return Value(false);
    }
    if (name == "strip" || name == "lstrip" || name == "rstrip") {
      const Value* chars = Arg(args, 0, kwargs, "chars");
      return Value(Strip(s, chars, name != "rstrip", name != "lstrip"));
    }
    if (name == "split" || name == "rsplit") {
      const Value* sep = Arg(args, 0, kwargs, "sep");
      const Value* maxsplit = Arg(args, 1, kwargs, "maxsplit");
      int64_t m = maxsplit && maxsplit->is_int() ? maxsplit->int_value() : -1;
      if (name == "rsplit" && m >= 0) return Unsupported(line, "rsplit with maxsplit");
      KVF_ASSIGN_OR_RETURN(Array parts, Split(s, sep, m, line));
      return Value(std::move(parts));
    }
    if (name == "upper" || name == "lower") return Value(MapCase(s, name == "lower" ? 0 : 1));
    if (name == "capitalize") return Value(Capitalize(s));
    if (name == "title") return Value(Title(s));
    if (name == "replace") {
      if (args.size() < 2 || !args[0].is_string() || !args[1].is_string()) return Err(line, "replace(old, new[, count])");
      int64_t count = args.size() > 2 && args[2].is_int() ? args[2].int_value() : -1;
      return Value(Replace(s, args[0].str(), args[1].str(), count));
    }
    if (name == "find" || name == "count" || name == "index" || name == "rfind") {
      if (args.empty() || !args[0].is_string()) return Err(line, name + "() needs a string");
      const std::string& p = args[0].str();
      if (name == "count") {
        if (p.empty()) return Value(int64_t(CodePointCount(s) + 1));
        int64_t c = 0;
        for (size_t pos = s.find(p); pos != std::string::npos; pos = s.find(p, pos + p.size())) ++c;
        return Value(c);
      }
      size_t f = name == "rfind" ? s.rfind(p) : s.find(p);
      if (f == std::string::npos) {
        if (name == "index") return Err(line, "substring not found");
        return Value(int64_t(-1));
      }
      return Value(int64_t(CodePointCount(std::string_view(s).substr(0, f))));
    }
    if (name == "join") {
      if (args.empty()) return Err(line, "join() needs an iterable");
      KVF_ASSIGN_OR_RETURN(Array items, ToList(args[0], line));
      std::string out;
      for (size_t i = 0; i < items.size(); ++i) {
        if (!items[i].is_string()) return Err(line, "join() needs strings");
        if (i) out += s;
        out += items[i].str();
      }
      return Value(std::move(out));
    }
    if (name == "isdigit" || name == "isspace" || name == "isalpha" || name == "isalnum" || name == "islower" ||
        name == "isupper") {
      std::vector<uint32_t> cps = CodePoints(s);
      if (name == "islower" || name == "isupper") {
        bool cased = false;
        for (uint32_t c : cps) {
          if (!IsCased(c)) continue;
          cased = true;
          bool lower = utf8proc_tolower(int32_t(c)) == int32_t(c);
          if ((name == "islower") != lower) return Value(false);
        }
        return Value(cased);
      }
      if (cps.empty()) return Value(false);
      for (uint32_t c : cps) {
        utf8proc_category_t cat = utf8proc_category(int32_t(c));
        bool letter = cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO;
        bool digit = cat == UTF8PROC_CATEGORY_ND;
        bool ok = name == "isdigit"   ? digit
                  : name == "isspace" ? IsPySpace(c)
                  : name == "isalpha" ? letter
                                      : (letter || digit);
        if (!ok) return Value(false);
      }
      return Value(true);
    }
    return Unsupported(line, "the string method '" + name + "'");
  }
  if (obj.is_object() && !obj.object().is_namespace) {
    const Object& o = obj.object();
    if (name == "items") {
      Array out;
      for (const auto& [k, x] : o.items) out.push_back(Value(Array{Value(k), x}));
      return Value(std::move(out));
    }
    if (name == "keys" || name == "values") {
      Array out;
      for (const auto& [k, x] : o.items) out.push_back(name == "keys" ? Value(k) : x);
      return Value(std::move(out));
    }
    if (name == "get") {
      if (args.empty()) return Err(line, "get() needs a key");
      const Value* x = args[0].is_string() ? o.Find(args[0].str()) : nullptr;
      if (x) return *x;
      return args.size() > 1 ? args[1] : Value::None();
    }
    return Unsupported(line, "the dict method '" + name + "'");
  }
  if (obj.is_array()) {
    if (name == "index" || name == "count") {
      if (args.empty()) return Err(line, name + "() needs an argument");
      int64_t count = 0;
      for (size_t i = 0; i < obj.array().size(); ++i) {
        if (obj.array()[i].Equals(args[0])) {
          if (name == "index") return Value(int64_t(i));
          ++count;
        }
      }
      if (name == "index") return Err(line, "value is not in list");
      return Value(count);
    }
    return Unsupported(line, "the list method '" + name + "' (templates run in an immutable sandbox)");
  }
  return Err(line, "'" + std::string(obj.TypeName()) + "' object has no method '" + name + "'");
}

}  // namespace kvferry::tokenizer::jinja
