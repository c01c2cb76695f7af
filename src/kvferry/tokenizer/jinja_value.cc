// Values of the Jinja interpreter: Python semantics for truth, str(), repr(), ==, json.dumps.
#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "kvferry/tokenizer/jinja.h"

namespace kvferry::tokenizer::jinja {

const Value* Object::Find(std::string_view key) const {
  for (const auto& [k, v] : items)
    if (k == key) return &v;
  return nullptr;
}

void Object::Set(std::string key, Value value) {
  for (auto& [k, v] : items) {
    if (k == key) {
      v = std::move(value);
      return;
    }
  }
  items.emplace_back(std::move(key), std::move(value));
}

bool Value::Truthy() const {
  switch (kind_) {
    case Kind::kUndefined:
    case Kind::kNone: return false;
    case Kind::kBool:
    case Kind::kInt: return int_ != 0;
    case Kind::kFloat: return float_ != 0;
    case Kind::kString: return !string_->empty();
    case Kind::kArray: return !array_->empty();
    case Kind::kObject: return object_->is_namespace || !object_->items.empty();
    case Kind::kMacro: return true;
  }
  return false;
}

std::string FormatFloat(double f) {
  if (std::isnan(f)) return "nan";
  if (std::isinf(f)) return f > 0 ? "inf" : "-inf";
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof(buf), f, std::chars_format::scientific);
  std::string sci(buf, res.ptr);  // like "-1.2345e+02"
  bool negative = sci[0] == '-';
  if (negative) sci.erase(0, 1);
  size_t e = sci.find('e');
  int exp = std::atoi(sci.c_str() + e + 1);
  std::string digits;
  for (size_t i = 0; i < e; ++i)
    if (sci[i] != '.') digits.push_back(sci[i]);
  std::string out = negative ? "-" : "";
  if (exp >= -4 && exp < 16) {
    if (exp < 0) {
      out += "0." + std::string(size_t(-exp - 1), '0') + digits;
    } else if (size_t(exp) + 1 >= digits.size()) {
      out += digits + std::string(size_t(exp) + 1 - digits.size(), '0') + ".0";
    } else {
      out += digits.substr(0, size_t(exp) + 1) + "." + digits.substr(size_t(exp) + 1);
    }
  } else {
    out += digits.substr(0, 1);
    if (digits.size() > 1) out += "." + digits.substr(1);
    char eb[16];
    std::snprintf(eb, sizeof(eb), "e%c%02d", exp < 0 ? '-' : '+', std::abs(exp));
    out += eb;
  }
  return out;
}

size_t CodePointCount(std::string_view s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

namespace {
std::string ReprString(const std::string& s) {
  char quote = (s.find('\'') != std::string::npos && s.find('"') == std::string::npos) ? '"' : '\'';
  std::string out(1, quote);
  for (unsigned char c : s) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == static_cast<unsigned char>(quote)) {
      out += '\\';
      out += char(c);
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02x", c);
      out += buf;
    } else {
      out += char(c);
    }
  }
  out += quote;
  return out;
}

void JsonString(const std::string& s, std::string* out) {
  out->push_back('"');
  for (unsigned char c : s) {
    switch (c) {
      case '"': *out += "\\\""; break;
      case '\\': *out += "\\\\"; break;
      case '\n': *out += "\\n"; break;
      case '\r': *out += "\\r"; break;
      case '\t': *out += "\\t"; break;
      case '\b': *out += "\\b"; break;
      case '\f': *out += "\\f"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", c);
          *out += buf;
        } else {
          out->push_back(char(c));
        }
    }
  }
  out->push_back('"');
}

Status ToJsonImpl(const Value& v, int indent, bool sort_keys, int depth, std::string* out) {
  if (depth > 256) return InvalidArgumentError("tojson: value nested too deeply");
  auto newline = [&](int d) {
    if (indent < 0) return;
    out->push_back('\n');
    out->append(size_t(indent) * size_t(d), ' ');
  };
  const char* item_sep = indent < 0 ? ", " : ",";
  switch (v.kind()) {
    case Value::Kind::kNone: *out += "null"; return Status::Ok();
    case Value::Kind::kBool: *out += v.bool_value() ? "true" : "false"; return Status::Ok();
    case Value::Kind::kInt: *out += std::to_string(v.int_value()); return Status::Ok();
    case Value::Kind::kFloat: {
      double f = v.number();
      *out += std::isnan(f) ? "NaN" : std::isinf(f) ? (f > 0 ? "Infinity" : "-Infinity") : FormatFloat(f);
      return Status::Ok();
    }
    case Value::Kind::kString: JsonString(v.str(), out); return Status::Ok();
    case Value::Kind::kArray: {
      if (v.array().empty()) {
        *out += "[]";
        return Status::Ok();
      }
      out->push_back('[');
      bool first = true;
      for (const Value& x : v.array()) {
        if (!first) *out += item_sep;
        first = false;
        newline(depth + 1);
        KVF_RETURN_IF_ERROR(ToJsonImpl(x, indent, sort_keys, depth + 1, out));
      }
      newline(depth);
      out->push_back(']');
      return Status::Ok();
    }
    case Value::Kind::kObject: {
      if (v.object().items.empty()) {
        *out += "{}";
        return Status::Ok();
      }
      std::vector<const std::pair<std::string, Value>*> items;
      for (const auto& kv : v.object().items) items.push_back(&kv);
      if (sort_keys) {
        std::stable_sort(items.begin(), items.end(), [](auto* a, auto* b) { return a->first < b->first; });
      }
      out->push_back('{');
      bool first = true;
      for (const auto* kv : items) {
        if (!first) *out += item_sep;
        first = false;
        newline(depth + 1);
        JsonString(kv->first, out);
        *out += ": ";
        KVF_RETURN_IF_ERROR(ToJsonImpl(kv->second, indent, sort_keys, depth + 1, out));
      }
      newline(depth);
      out->push_back('}');
      return Status::Ok();
    }
    case Value::Kind::kUndefined: return InvalidArgumentError("tojson: Object of type Undefined is not JSON serializable");
    case Value::Kind::kMacro: return InvalidArgumentError("tojson: a macro is not JSON serializable");
  }
  return Status::Ok();
}
}  // namespace

std::string Value::Repr() const {
  switch (kind_) {
    case Kind::kString: return ReprString(*string_);
    default: return ToString();
  }
}

std::string Value::ToString() const {
  switch (kind_) {
    case Kind::kUndefined: return "";
    case Kind::kNone: return "None";
    case Kind::kBool: return int_ ? "True" : "False";
    case Kind::kInt: return std::to_string(int_);
    case Kind::kFloat: return FormatFloat(float_);
    case Kind::kString: return *string_;
    case Kind::kArray: {
      std::string s = "[";
      for (size_t i = 0; i < array_->size(); ++i) s += (i ? ", " : "") + (*array_)[i].Repr();
      return s + "]";
    }
    case Kind::kObject: {
      if (object_->is_namespace) return "<Namespace>";
      std::string s = "{";
      bool first = true;
      for (const auto& [k, v] : object_->items) {
        s += (first ? "" : ", ") + ReprString(k) + ": " + v.Repr();
        first = false;
      }
      return s + "}";
    }
    case Kind::kMacro: return "<Macro>";
  }
  return "";
}

StatusOr<std::string> Value::ToJson(int indent, bool sort_keys) const {
  std::string out;
  KVF_RETURN_IF_ERROR(ToJsonImpl(*this, indent, sort_keys, 0, &out));
  return out;
}

bool Value::Equals(const Value& o) const {
  bool numeric = (is_number() || is_bool()) && (o.is_number() || o.is_bool());
  if (numeric) {
    if (is_float() || o.is_float()) return number() == o.number();
    return int_ == o.int_;
  }
  if (kind_ != o.kind_) return false;
  switch (kind_) {
    case Kind::kUndefined:
    case Kind::kNone: return true;
    case Kind::kString: return *string_ == *o.string_;
    case Kind::kArray: {
      if (array_->size() != o.array_->size()) return false;
      for (size_t i = 0; i < array_->size(); ++i)
        if (!(*array_)[i].Equals((*o.array_)[i])) return false;
      return true;
    }
    case Kind::kObject: {
      if (object_ == o.object_) return true;
      if (object_->is_namespace || o.object_->is_namespace) return false;
      if (object_->items.size() != o.object_->items.size()) return false;
      for (const auto& [k, v] : object_->items) {
        const Value* other = o.object_->Find(k);
        if (other == nullptr || !v.Equals(*other)) return false;
      }
      return true;
    }
    case Kind::kMacro: return macro_ == o.macro_;
    default: return false;
  }
}

std::string_view Value::TypeName() const {
  switch (kind_) {
    case Kind::kUndefined: return "undefined";
    case Kind::kNone: return "NoneType";
    case Kind::kBool: return "bool";
    case Kind::kInt: return "int";
    case Kind::kFloat: return "float";
    case Kind::kString: return "str";
    case Kind::kArray: return "list";
    case Kind::kObject: return object_->is_namespace ? "Namespace" : "dict";
    case Kind::kMacro: return "Macro";
  }
  return "?";
}

namespace {
StatusOr<Value> FromNlohmann(const nlohmann::ordered_json& j, int depth) {
  if (depth > 256) return InvalidArgumentError("JSON nested too deeply");
  switch (j.type()) {
    case nlohmann::ordered_json::value_t::null: return Value::None();
    case nlohmann::ordered_json::value_t::boolean: return Value(j.get<bool>());
    case nlohmann::ordered_json::value_t::number_integer: return Value(j.get<int64_t>());
    case nlohmann::ordered_json::value_t::number_unsigned: {
      uint64_t u = j.get<uint64_t>();
      if (u > uint64_t(INT64_MAX)) return Value(double(u));
      return Value(int64_t(u));
    }
    case nlohmann::ordered_json::value_t::number_float: return Value(j.get<double>());
    case nlohmann::ordered_json::value_t::string: return Value(j.get<std::string>());
    case nlohmann::ordered_json::value_t::array: {
      Array a;
      a.reserve(j.size());
      for (const auto& x : j) {
        KVF_ASSIGN_OR_RETURN(Value v, FromNlohmann(x, depth + 1));
        a.push_back(std::move(v));
      }
      return Value(std::move(a));
    }
    case nlohmann::ordered_json::value_t::object: {
      Object o;
      for (auto it = j.begin(); it != j.end(); ++it) {
        KVF_ASSIGN_OR_RETURN(Value v, FromNlohmann(it.value(), depth + 1));
        o.Set(it.key(), std::move(v));
      }
      return Value(std::move(o));
    }
    default: return InvalidArgumentError("unsupported JSON value");
  }
}
}  // namespace

StatusOr<Value> ValueFromJson(std::string_view json) {
  auto j = nlohmann::ordered_json::parse(json, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return InvalidArgumentError("not valid JSON");
  return FromNlohmann(j, 0);
}

}  // namespace kvferry::tokenizer::jinja
