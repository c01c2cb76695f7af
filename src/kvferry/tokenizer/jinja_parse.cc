// Jinja lexer and parser: template source -> AST. Whitespace control follows Jinja2 with
// trim_blocks=True and lstrip_blocks=True (transformers' settings) and drops one trailing newline
// (keep_trailing_newline=False).
#include <charconv>
#include <set>

#include "kvferry/tokenizer/jinja.h"

namespace kvferry::tokenizer::jinja {
namespace {

// ---- Segments: text and tags ----

struct Segment {
  enum Type { kText, kOutput, kStatement } type;
  std::string_view text;  // tag: the inside, without delimiters and whitespace-control marks
  int line;
};

int LineAt(std::string_view src, size_t pos) {
  int line = 1;
  for (size_t i = 0; i < pos && i < src.size(); ++i) line += src[i] == '\n';
  return line;
}

bool IsSpace(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

// Finds the end of a tag body starting at `pos`, skipping string literals. Returns npos if none.
size_t FindCloser(std::string_view src, size_t pos, std::string_view closer) {
  char quote = 0;
  for (size_t i = pos; i < src.size(); ++i) {
    char c = src[i];
    if (quote) {
      if (c == '\\') {
        ++i;
      } else if (c == quote) {
        quote = 0;
      }
    } else if (c == '\'' || c == '"') {
      quote = c;
    } else if (src.compare(i, closer.size(), closer) == 0) {
      return i;
    }
  }
  return std::string_view::npos;
}

StatusOr<std::vector<Segment>> Segmentize(std::string_view src) {
  if (src.size() >= 2 && src.substr(src.size() - 2) == "\r\n") {
    src.remove_suffix(2);
  } else if (!src.empty() && src.back() == '\n') {
    src.remove_suffix(1);
  }
  std::vector<Segment> out;
  size_t pos = 0;
  bool strip_next = false;  // previous tag ended with '-'
  while (pos <= src.size()) {
    size_t start = pos;
    while (true) {
      start = src.find('{', start);
      if (start == std::string_view::npos || start + 1 >= src.size()) {
        start = std::string_view::npos;
        break;
      }
      char k = src[start + 1];
      if (k == '{' || k == '%' || k == '#') break;
      ++start;
    }
    size_t text_end = start == std::string_view::npos ? src.size() : start;
    std::string_view text = src.substr(pos, text_end - pos);
    if (strip_next) {
      size_t i = 0;
      while (i < text.size() && IsSpace(text[i])) ++i;
      text.remove_prefix(i);
    }
    if (start == std::string_view::npos) {
      if (!text.empty()) out.push_back({Segment::kText, text, LineAt(src, pos)});
      break;
    }
    char kind = src[start + 1];
    size_t body = start + 2;
    bool minus_left = body < src.size() && src[body] == '-';
    bool plus_left = body < src.size() && src[body] == '+';
    if (minus_left || plus_left) ++body;
    if (minus_left) {
      while (!text.empty() && IsSpace(text.back())) text.remove_suffix(1);
    } else if (kind != '{' && !plus_left) {
      // lstrip_blocks: drop spaces/tabs between the start of the line and a block or comment tag.
      size_t ws = start;
      while (ws > 0 && (src[ws - 1] == ' ' || src[ws - 1] == '\t')) --ws;
      if ((ws == 0 || src[ws - 1] == '\n') && ws >= pos) {
        size_t keep = text.size() - (start - ws);
        text = text.substr(0, keep);
      }
    }
    if (!text.empty()) out.push_back({Segment::kText, text, LineAt(src, pos)});
    std::string_view closer = kind == '{' ? "}}" : kind == '%' ? "%}" : "#}";
    size_t close = kind == '#' ? src.find(closer, body) : FindCloser(src, body, closer);
    if (close == std::string_view::npos) {
      return InvalidArgumentError("template line " + std::to_string(LineAt(src, start)) + ": unclosed tag");
    }
    bool minus_right = close > body && src[close - 1] == '-';
    std::string_view inside = src.substr(body, close - body - (minus_right ? 1 : 0));
    if (kind != '#') out.push_back({kind == '{' ? Segment::kOutput : Segment::kStatement, inside, LineAt(src, start)});
    pos = close + 2;
    strip_next = minus_right;
    if (!minus_right && kind != '{' && pos < src.size() && src[pos] == '\n') ++pos;  // trim_blocks
  }
  return out;
}

// ---- Expression tokens ----

struct Token {
  enum Type { kName, kString, kInt, kFloat, kOp, kEnd } type = kEnd;
  std::string text;
  int64_t int_value = 0;
  double float_value = 0;
};

StatusOr<std::vector<Token>> Tokenize(std::string_view s, int line) {
  auto error = [&](const std::string& what) {
    return InvalidArgumentError("template line " + std::to_string(line) + ": " + what);
  };
  std::vector<Token> out;
  size_t i = 0;
  while (i < s.size()) {
    char c = s[i];
    if (IsSpace(c)) {
      ++i;
      continue;
    }
    Token t;
    if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
      size_t j = i;
      while (j < s.size() && (std::isalnum(static_cast<unsigned char>(s[j])) || s[j] == '_')) ++j;
      t.type = Token::kName;
      t.text = std::string(s.substr(i, j - i));
      i = j;
    } else if (std::isdigit(static_cast<unsigned char>(c))) {
      size_t j = i;
      while (j < s.size() && (std::isdigit(static_cast<unsigned char>(s[j])) || s[j] == '_')) ++j;
      bool is_float = false;
      if (j + 1 < s.size() && s[j] == '.' && std::isdigit(static_cast<unsigned char>(s[j + 1]))) {
        is_float = true;
        ++j;
        while (j < s.size() && std::isdigit(static_cast<unsigned char>(s[j]))) ++j;
      }
      if (j < s.size() && (s[j] == 'e' || s[j] == 'E')) {
        size_t k = j + 1;
        if (k < s.size() && (s[k] == '+' || s[k] == '-')) ++k;
        if (k < s.size() && std::isdigit(static_cast<unsigned char>(s[k]))) {
          is_float = true;
          j = k;
          while (j < s.size() && std::isdigit(static_cast<unsigned char>(s[j]))) ++j;
        }
      }
      std::string num;
      for (char d : s.substr(i, j - i))
        if (d != '_') num.push_back(d);
      if (is_float) {
        t.type = Token::kFloat;
        t.float_value = std::strtod(num.c_str(), nullptr);
      } else {
        t.type = Token::kInt;
        auto r = std::from_chars(num.data(), num.data() + num.size(), t.int_value);
        if (r.ec != std::errc()) return error("integer literal out of range");
      }
      i = j;
    } else if (c == '\'' || c == '"') {
      std::string v;
      size_t j = i + 1;
      bool closed = false;
      while (j < s.size()) {
        char d = s[j];
        if (d == c) {
          closed = true;
          ++j;
          break;
        }
        if (d == '\\' && j + 1 < s.size()) {
          char e = s[j + 1];
          j += 2;
          switch (e) {
            case 'n': v += '\n'; break;
            case 't': v += '\t'; break;
            case 'r': v += '\r'; break;
            case '\\': v += '\\'; break;
            case '\'': v += '\''; break;
            case '"': v += '"'; break;
            case '0': v += '\0'; break;
            case 'b': v += '\b'; break;
            case 'f': v += '\f'; break;
            case '\n': break;
            case 'u':
            case 'U':
            case 'x': {
              size_t len = e == 'x' ? 2 : e == 'u' ? 4 : 8;
              if (j + len > s.size()) return error("bad \\" + std::string(1, e) + " escape");
              uint32_t cp = 0;
              for (size_t k = 0; k < len; ++k) {
                char h = s[j + k];
                int d2 = std::isdigit(static_cast<unsigned char>(h)) ? h - '0'
                         : (h >= 'a' && h <= 'f')                    ? h - 'a' + 10
                         : (h >= 'A' && h <= 'F')                    ? h - 'A' + 10
                                                                     : -1;
                if (d2 < 0) return error("bad hex escape");
                cp = cp * 16 + uint32_t(d2);
              }
              if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return error("bad code point escape");
              j += len;
              // UTF-8 encode
              if (cp < 0x80) {
                v += char(cp);
              } else if (cp < 0x800) {
                v += char(0xC0 | (cp >> 6));
                v += char(0x80 | (cp & 0x3F));
              } else if (cp < 0x10000) {
                v += char(0xE0 | (cp >> 12));
                v += char(0x80 | ((cp >> 6) & 0x3F));
                v += char(0x80 | (cp & 0x3F));
              } else {
                v += char(0xF0 | (cp >> 18));
                v += char(0x80 | ((cp >> 12) & 0x3F));
                v += char(0x80 | ((cp >> 6) & 0x3F));
                v += char(0x80 | (cp & 0x3F));
              }
              break;
            }
            default:  // Python keeps unknown escapes as written
              v += '\\';
              v += e;
          }
          continue;
        }
        v += d;
        ++j;
      }
      if (!closed) return error("unterminated string literal");
      t.type = Token::kString;
      t.text = std::move(v);
      i = j;
    } else {
      static const char* kOps[] = {"//", "**", "==", "!=", "<=", ">=", "+", "-", "*", "/", "%", "~", "<", ">",
                                   "(", ")", "[", "]", "{", "}", ".", ",", ":", "|", "="};
      bool found = false;
      for (const char* op : kOps) {
        std::string_view o(op);
        if (s.compare(i, o.size(), o) == 0) {
          t.type = Token::kOp;
          t.text = std::string(o);
          i += o.size();
          found = true;
          break;
        }
      }
      if (!found) return error(std::string("unexpected character '") + c + "'");
    }
    out.push_back(std::move(t));
  }
  out.push_back(Token{});
  return out;
}

const std::set<std::string>& KnownFilters() {
  static const std::set<std::string> k = {
      "trim", "length", "count", "tojson", "join", "reject", "select", "rejectattr", "selectattr", "map", "items",
      "list", "string", "lower", "upper", "title", "capitalize", "first", "last", "default", "d", "int", "float",
      "abs", "replace", "safe", "reverse", "sort", "unique", "e", "escape", "indent"};
  return k;
}
const std::set<std::string>& KnownTests() {
  static const std::set<std::string> k = {
      "defined", "undefined", "none", "string", "number", "integer", "float", "boolean", "true", "false",
      "mapping", "iterable", "sequence", "callable", "odd", "even", "divisibleby", "equalto", "eq", "==", "ne",
      "!=", "lt", "<", "le", "<=", "gt", ">", "ge", ">=", "in", "lower", "upper", "sameas"};
  return k;
}

// ---- Parser ----

class Parser {
 public:
  explicit Parser(std::vector<Segment> segments) : segments_(std::move(segments)) {}

  Status ParseAll(std::vector<NodePtr>* body) {
    std::string end;
    KVF_RETURN_IF_ERROR(ParseBlock(body, {}, &end));
    return Status::Ok();
  }

 private:
  Status Error(const std::string& what) const {
    return InvalidArgumentError("template line " + std::to_string(line_) + ": " + what);
  }
  Status Unsupported(const std::string& what) const {
    return UnimplementedError("template line " + std::to_string(line_) + ": " + what +
                              " is not supported by kvferry's Jinja subset");
  }

  NodePtr MakeNode(NodeKind kind) {
    auto n = std::make_unique<Node>();
    n->kind = kind;
    n->line = line_;
    return n;
  }

  // Parses segments into `body` until a statement whose first word is in `enders` (returned in
  // *end, with its tokens left in toks_) or the end of input (then *end is empty).
  Status ParseBlock(std::vector<NodePtr>* body, const std::set<std::string>& enders, std::string* end) {
    while (seg_ < segments_.size()) {
      const Segment& s = segments_[seg_++];
      line_ = s.line;
      if (s.type == Segment::kText) {
        auto n = MakeNode(NodeKind::kText);
        n->name = std::string(s.text);
        body->push_back(std::move(n));
        continue;
      }
      KVF_ASSIGN_OR_RETURN(toks_, Tokenize(s.text, s.line));
      pos_ = 0;
      if (s.type == Segment::kOutput) {
        auto n = MakeNode(NodeKind::kOutput);
        KVF_ASSIGN_OR_RETURN(n->expr, ParseExpression());
        KVF_RETURN_IF_ERROR(ExpectEnd());
        body->push_back(std::move(n));
        continue;
      }
      if (Peek().type != Token::kName) return Error("expected a statement name");
      std::string word = Next().text;
      if (enders.count(word)) {
        *end = word;
        return Status::Ok();
      }
      KVF_RETURN_IF_ERROR(ParseStatement(word, body));
    }
    if (!enders.empty()) return Error("missing {% " + *enders.begin() + " %} (or another closing tag)");
    end->clear();
    return Status::Ok();
  }

  Status ParseStatement(const std::string& word, std::vector<NodePtr>* body) {
    if (++block_depth_ > 100) return Error("blocks nested too deeply");
    Status status = ParseStatementInner(word, body);
    --block_depth_;
    return status;
  }

  Status ParseStatementInner(const std::string& word, std::vector<NodePtr>* body) {
    if (word == "if") {
      auto n = MakeNode(NodeKind::kIf);
      KVF_ASSIGN_OR_RETURN(NodePtr cond, ParseExpression());
      KVF_RETURN_IF_ERROR(ExpectEnd());
      while (true) {
        std::vector<NodePtr> branch;
        std::string end;
        KVF_RETURN_IF_ERROR(ParseBlock(&branch, {"elif", "else", "endif"}, &end));
        n->branches.emplace_back(std::move(cond), std::move(branch));
        if (end == "endif") break;
        if (end == "elif") {
          KVF_ASSIGN_OR_RETURN(cond, ParseExpression());
        } else {
          cond = nullptr;
          KVF_RETURN_IF_ERROR(ExpectEnd());
          std::vector<NodePtr> else_branch;
          KVF_RETURN_IF_ERROR(ParseBlock(&else_branch, {"endif"}, &end));
          n->branches.emplace_back(nullptr, std::move(else_branch));
          KVF_RETURN_IF_ERROR(ExpectEnd());
          break;
        }
        KVF_RETURN_IF_ERROR(ExpectEnd());
      }
      KVF_RETURN_IF_ERROR(ExpectEnd());
      body->push_back(std::move(n));
      return Status::Ok();
    }
    if (word == "for") {
      auto n = MakeNode(NodeKind::kFor);
      do {
        if (Peek().type != Token::kName) return Error("expected a loop variable");
        n->targets.push_back(Next().text);
      } while (AcceptOp(","));
      if (!AcceptName("in")) return Error("expected 'in' in for loop");
      KVF_ASSIGN_OR_RETURN(n->expr, ParseOr(/*allow_cond=*/false));
      if (AcceptName("if")) {
        KVF_ASSIGN_OR_RETURN(n->cond, ParseOr(false));
      }
      if (AcceptName("recursive")) return Unsupported("recursive for loops");
      KVF_RETURN_IF_ERROR(ExpectEnd());
      std::string end;
      KVF_RETURN_IF_ERROR(ParseBlock(&n->body, {"else", "endfor"}, &end));
      KVF_RETURN_IF_ERROR(ExpectEnd());
      if (end == "else") {
        KVF_RETURN_IF_ERROR(ParseBlock(&n->else_body, {"endfor"}, &end));
        KVF_RETURN_IF_ERROR(ExpectEnd());
      }
      body->push_back(std::move(n));
      return Status::Ok();
    }
    if (word == "set") {
      std::vector<std::string> targets;
      do {
        if (Peek().type != Token::kName) return Error("expected a variable after set");
        std::string target = Next().text;
        if (AcceptOp(".")) {
          if (Peek().type != Token::kName) return Error("expected an attribute name");
          target += "." + Next().text;
        }
        targets.push_back(std::move(target));
      } while (AcceptOp(","));
      if (AcceptOp("=")) {
        auto n = MakeNode(NodeKind::kSet);
        n->targets = std::move(targets);
        KVF_ASSIGN_OR_RETURN(n->expr, ParseTupleOrExpression());
        KVF_RETURN_IF_ERROR(ExpectEnd());
        body->push_back(std::move(n));
        return Status::Ok();
      }
      if (targets.size() != 1 || targets[0].find('.') != std::string::npos) return Error("bad block set");
      if (Peek().type == Token::kOp && Peek().text == "|") return Unsupported("filters on a block set");
      KVF_RETURN_IF_ERROR(ExpectEnd());
      auto n = MakeNode(NodeKind::kSetBlock);
      n->targets = std::move(targets);
      std::string end;
      KVF_RETURN_IF_ERROR(ParseBlock(&n->body, {"endset"}, &end));
      KVF_RETURN_IF_ERROR(ExpectEnd());
      body->push_back(std::move(n));
      return Status::Ok();
    }
    if (word == "macro") {
      auto n = MakeNode(NodeKind::kMacro);
      if (Peek().type != Token::kName) return Error("expected a macro name");
      n->name = Next().text;
      if (!AcceptOp("(")) return Error("expected '(' after the macro name");
      while (!AcceptOp(")")) {
        if (Peek().type != Token::kName) return Error("expected a macro parameter");
        n->targets.push_back(Next().text);
        if (AcceptOp("=")) {
          KVF_ASSIGN_OR_RETURN(NodePtr def, ParseExpression());
          n->children.push_back(std::move(def));
        } else {
          n->children.push_back(nullptr);
        }
        if (!AcceptOp(",")) {
          if (!AcceptOp(")")) return Error("expected ',' or ')' in macro parameters");
          break;
        }
      }
      KVF_RETURN_IF_ERROR(ExpectEnd());
      std::string end;
      KVF_RETURN_IF_ERROR(ParseBlock(&n->body, {"endmacro"}, &end));
      if (Peek().type == Token::kName) Next();  // {% endmacro name %}
      KVF_RETURN_IF_ERROR(ExpectEnd());
      body->push_back(std::move(n));
      return Status::Ok();
    }
    if (word == "break" || word == "continue") {
      KVF_RETURN_IF_ERROR(ExpectEnd());
      body->push_back(MakeNode(word == "break" ? NodeKind::kBreak : NodeKind::kContinue));
      return Status::Ok();
    }
    if (word == "generation") {  // transformers' AssistantTracker: renders its body unchanged
      KVF_RETURN_IF_ERROR(ExpectEnd());
      std::string end;
      KVF_RETURN_IF_ERROR(ParseBlock(body, {"endgeneration"}, &end));
      return ExpectEnd();
    }
    return Unsupported("the '" + word + "' statement");
  }

  // ---- expressions ----
  const Token& Peek(size_t ahead = 0) const { return toks_[std::min(pos_ + ahead, toks_.size() - 1)]; }
  Token Next() {
    Token t = toks_[pos_];
    if (pos_ + 1 < toks_.size()) ++pos_;
    return t;
  }
  bool AcceptOp(std::string_view op) {
    if (Peek().type == Token::kOp && Peek().text == op) {
      Next();
      return true;
    }
    return false;
  }
  bool AcceptName(std::string_view name) {
    if (Peek().type == Token::kName && Peek().text == name) {
      Next();
      return true;
    }
    return false;
  }
  Status ExpectOp(std::string_view op) {
    if (!AcceptOp(op)) return Error("expected '" + std::string(op) + "'");
    return Status::Ok();
  }
  Status ExpectEnd() {
    if (Peek().type != Token::kEnd) return Error("unexpected '" + Peek().text + "'");
    return Status::Ok();
  }

  StatusOr<NodePtr> ParseTupleOrExpression() {
    KVF_ASSIGN_OR_RETURN(NodePtr first, ParseExpression());
    if (!(Peek().type == Token::kOp && Peek().text == ",")) return first;
    auto t = MakeNode(NodeKind::kTuple);
    t->children.push_back(std::move(first));
    while (AcceptOp(",")) {
      if (Peek().type == Token::kEnd) break;
      KVF_ASSIGN_OR_RETURN(NodePtr x, ParseExpression());
      t->children.push_back(std::move(x));
    }
    return t;
  }

  StatusOr<NodePtr> ParseExpression() { return ParseOr(true); }

  StatusOr<NodePtr> ParseOr(bool allow_cond) {
    if (++depth_ > 200) return Error("expression nested too deeply");
    KVF_ASSIGN_OR_RETURN(NodePtr left, ParseAnd());
    while (AcceptName("or")) {
      auto n = MakeNode(NodeKind::kOr);
      KVF_ASSIGN_OR_RETURN(NodePtr right, ParseAnd());
      n->children.push_back(std::move(left));
      n->children.push_back(std::move(right));
      left = std::move(n);
    }
    if (allow_cond && Peek().type == Token::kName && Peek().text == "if") {
      Next();
      auto n = MakeNode(NodeKind::kCondExpr);
      KVF_ASSIGN_OR_RETURN(NodePtr cond, ParseOr(false));
      NodePtr otherwise;
      if (AcceptName("else")) {
        KVF_ASSIGN_OR_RETURN(otherwise, ParseOr(true));
      }
      n->children.push_back(std::move(cond));
      n->children.push_back(std::move(left));
      n->children.push_back(std::move(otherwise));  // may be null: undefined
      left = std::move(n);
    }
    --depth_;
    return left;
  }

  StatusOr<NodePtr> ParseAnd() {
    KVF_ASSIGN_OR_RETURN(NodePtr left, ParseNot());
    while (AcceptName("and")) {
      auto n = MakeNode(NodeKind::kAnd);
      KVF_ASSIGN_OR_RETURN(NodePtr right, ParseNot());
      n->children.push_back(std::move(left));
      n->children.push_back(std::move(right));
      left = std::move(n);
    }
    return left;
  }

  StatusOr<NodePtr> ParseNot() {
    if (AcceptName("not")) {
      if (++depth_ > 200) return Error("expression nested too deeply");
      auto n = MakeNode(NodeKind::kNot);
      KVF_ASSIGN_OR_RETURN(NodePtr x, ParseNot());
      --depth_;
      n->children.push_back(std::move(x));
      return n;
    }
    return ParseCompare();
  }

  StatusOr<NodePtr> ParseCompare() {
    KVF_ASSIGN_OR_RETURN(NodePtr left, ParseMath1());
    while (true) {
      std::string op;
      const Token& t = Peek();
      if (t.type == Token::kOp && (t.text == "==" || t.text == "!=" || t.text == "<" || t.text == ">" ||
                                   t.text == "<=" || t.text == ">=")) {
        op = Next().text;
      } else if (t.type == Token::kName && t.text == "in") {
        Next();
        op = "in";
      } else if (t.type == Token::kName && t.text == "not" && Peek(1).type == Token::kName && Peek(1).text == "in") {
        Next();
        Next();
        op = "not in";
      } else {
        break;
      }
      auto n = MakeNode(NodeKind::kBinary);
      n->name = op;
      KVF_ASSIGN_OR_RETURN(NodePtr right, ParseMath1());
      n->children.push_back(std::move(left));
      n->children.push_back(std::move(right));
      left = std::move(n);
    }
    return left;
  }

  StatusOr<NodePtr> Binary(std::string op, NodePtr left, NodePtr right) {
    auto n = MakeNode(NodeKind::kBinary);
    n->name = std::move(op);
    n->children.push_back(std::move(left));
    n->children.push_back(std::move(right));
    return n;
  }

  StatusOr<NodePtr> ParseMath1() {
    KVF_ASSIGN_OR_RETURN(NodePtr left, ParseConcat());
    while (Peek().type == Token::kOp && (Peek().text == "+" || Peek().text == "-")) {
      std::string op = Next().text;
      KVF_ASSIGN_OR_RETURN(NodePtr right, ParseConcat());
      KVF_ASSIGN_OR_RETURN(left, Binary(op, std::move(left), std::move(right)));
    }
    return left;
  }

  StatusOr<NodePtr> ParseConcat() {
    KVF_ASSIGN_OR_RETURN(NodePtr left, ParseMath2());
    while (AcceptOp("~")) {
      KVF_ASSIGN_OR_RETURN(NodePtr right, ParseMath2());
      KVF_ASSIGN_OR_RETURN(left, Binary("~", std::move(left), std::move(right)));
    }
    return left;
  }

  StatusOr<NodePtr> ParseMath2() {
    KVF_ASSIGN_OR_RETURN(NodePtr left, ParsePow());
    while (Peek().type == Token::kOp &&
           (Peek().text == "*" || Peek().text == "/" || Peek().text == "//" || Peek().text == "%")) {
      std::string op = Next().text;
      KVF_ASSIGN_OR_RETURN(NodePtr right, ParsePow());
      KVF_ASSIGN_OR_RETURN(left, Binary(op, std::move(left), std::move(right)));
    }
    return left;
  }

  StatusOr<NodePtr> ParsePow() {
    KVF_ASSIGN_OR_RETURN(NodePtr left, ParseUnary());
    while (AcceptOp("**")) {
      KVF_ASSIGN_OR_RETURN(NodePtr right, ParseUnary());
      KVF_ASSIGN_OR_RETURN(left, Binary("**", std::move(left), std::move(right)));
    }
    return left;
  }

  StatusOr<NodePtr> ParseUnary() {
    if (Peek().type == Token::kOp && (Peek().text == "-" || Peek().text == "+")) {
      if (++depth_ > 200) return Error("expression nested too deeply");
      std::string op = Next().text;
      auto n = MakeNode(NodeKind::kUnary);
      n->name = op;
      KVF_ASSIGN_OR_RETURN(NodePtr x, ParseUnary());
      --depth_;
      n->children.push_back(std::move(x));
      return ParseFilters(std::move(n));
    }
    KVF_ASSIGN_OR_RETURN(NodePtr primary, ParsePrimary());
    KVF_ASSIGN_OR_RETURN(primary, ParsePostfix(std::move(primary)));
    return ParseFilters(std::move(primary));
  }

  StatusOr<NodePtr> ParsePrimary() {
    Token t = Next();
    switch (t.type) {
      case Token::kString: {
        std::string s = t.text;
        while (Peek().type == Token::kString) s += Next().text;  // adjacent literals concatenate
        auto n = MakeNode(NodeKind::kLiteral);
        n->literal = Value(std::move(s));
        return n;
      }
      case Token::kInt: {
        auto n = MakeNode(NodeKind::kLiteral);
        n->literal = Value(t.int_value);
        return n;
      }
      case Token::kFloat: {
        auto n = MakeNode(NodeKind::kLiteral);
        n->literal = Value(t.float_value);
        return n;
      }
      case Token::kName: {
        auto n = MakeNode(NodeKind::kLiteral);
        if (t.text == "true" || t.text == "True") {
          n->literal = Value(true);
        } else if (t.text == "false" || t.text == "False") {
          n->literal = Value(false);
        } else if (t.text == "none" || t.text == "None") {
          n->literal = Value::None();
        } else {
          n->kind = NodeKind::kName;
          n->name = t.text;
        }
        return n;
      }
      case Token::kOp: {
        if (++depth_ > 200) return Error("expression nested too deeply");
        NodePtr result;
        if (t.text == "(") {
          if (AcceptOp(")")) {
            result = MakeNode(NodeKind::kTuple);
          } else {
            KVF_ASSIGN_OR_RETURN(NodePtr x, ParseExpression());
            if (Peek().type == Token::kOp && Peek().text == ",") {
              auto tuple = MakeNode(NodeKind::kTuple);
              tuple->children.push_back(std::move(x));
              while (AcceptOp(",")) {
                if (Peek().type == Token::kOp && Peek().text == ")") break;
                KVF_ASSIGN_OR_RETURN(NodePtr y, ParseExpression());
                tuple->children.push_back(std::move(y));
              }
              x = std::move(tuple);
            }
            KVF_RETURN_IF_ERROR(ExpectOp(")"));
            result = std::move(x);
          }
        } else if (t.text == "[") {
          result = MakeNode(NodeKind::kList);
          while (!AcceptOp("]")) {
            KVF_ASSIGN_OR_RETURN(NodePtr x, ParseExpression());
            result->children.push_back(std::move(x));
            if (!AcceptOp(",")) {
              KVF_RETURN_IF_ERROR(ExpectOp("]"));
              break;
            }
          }
        } else if (t.text == "{") {
          result = MakeNode(NodeKind::kDict);
          while (!AcceptOp("}")) {
            KVF_ASSIGN_OR_RETURN(NodePtr k, ParseExpression());
            KVF_RETURN_IF_ERROR(ExpectOp(":"));
            KVF_ASSIGN_OR_RETURN(NodePtr v, ParseExpression());
            result->children.push_back(std::move(k));
            result->children.push_back(std::move(v));
            if (!AcceptOp(",")) {
              KVF_RETURN_IF_ERROR(ExpectOp("}"));
              break;
            }
          }
        } else {
          return Error("unexpected '" + t.text + "'");
        }
        --depth_;
        return result;
      }
      case Token::kEnd: return Error("unexpected end of expression");
    }
    return Error("bad expression");
  }

  // Arguments after '(' up to ')': positional then keyword.
  Status ParseArgs(Node* call) {
    while (!AcceptOp(")")) {
      if (Peek().type == Token::kName && Peek(1).type == Token::kOp && Peek(1).text == "=") {
        call->kwarg_names.push_back(Next().text);
        Next();
        KVF_ASSIGN_OR_RETURN(NodePtr v, ParseExpression());
        call->children.push_back(std::move(v));
      } else {
        if (!call->kwarg_names.empty()) return Error("positional argument after keyword argument");
        if (Peek().type == Token::kOp && (Peek().text == "*" || Peek().text == "**")) {
          return Unsupported("*args/**kwargs");
        }
        KVF_ASSIGN_OR_RETURN(NodePtr v, ParseExpression());
        call->children.push_back(std::move(v));
        ++call->num_positional;
      }
      if (!AcceptOp(",")) {
        KVF_RETURN_IF_ERROR(ExpectOp(")"));
        break;
      }
    }
    return Status::Ok();
  }

  StatusOr<NodePtr> ParsePostfix(NodePtr node) {
    while (true) {
      if (AcceptOp(".")) {
        auto n = MakeNode(NodeKind::kGetAttr);
        if (Peek().type == Token::kName) {
          n->name = Next().text;
        } else if (Peek().type == Token::kInt) {
          n->kind = NodeKind::kGetItem;
          auto idx = MakeNode(NodeKind::kLiteral);
          idx->literal = Value(Next().int_value);
          n->children.push_back(std::move(node));
          n->children.push_back(std::move(idx));
          node = std::move(n);
          continue;
        } else {
          return Error("expected an attribute name after '.'");
        }
        n->children.push_back(std::move(node));
        node = std::move(n);
      } else if (AcceptOp("[")) {
        // subscript or slice
        NodePtr parts[3];
        int colons = 0;
        bool is_slice = false;
        while (true) {
          if (Peek().type == Token::kOp && Peek().text == ":") {
            Next();
            is_slice = true;
            if (++colons > 2) return Error("bad slice");
            continue;
          }
          if (Peek().type == Token::kOp && Peek().text == "]") {
            Next();
            break;
          }
          if (parts[colons]) return Error("bad subscript");
          KVF_ASSIGN_OR_RETURN(parts[colons], ParseExpression());
        }
        auto n = MakeNode(is_slice ? NodeKind::kSlice : NodeKind::kGetItem);
        n->children.push_back(std::move(node));
        if (is_slice) {
          for (auto& p : parts) n->children.push_back(std::move(p));
        } else {
          if (!parts[0]) return Error("empty subscript");
          n->children.push_back(std::move(parts[0]));
        }
        node = std::move(n);
      } else if (AcceptOp("(")) {
        auto n = MakeNode(NodeKind::kCall);
        n->children.push_back(std::move(node));
        KVF_RETURN_IF_ERROR(ParseArgs(n.get()));
        node = std::move(n);
      } else {
        return node;
      }
    }
  }

  StatusOr<NodePtr> ParseFilters(NodePtr node) {
    while (true) {
      if (AcceptOp("|")) {
        if (Peek().type != Token::kName) return Error("expected a filter name");
        auto n = MakeNode(NodeKind::kFilter);
        n->name = Next().text;
        if (!KnownFilters().count(n->name)) return Unsupported("the filter '" + n->name + "'");
        n->children.push_back(std::move(node));
        if (AcceptOp("(")) KVF_RETURN_IF_ERROR(ParseArgs(n.get()));
        node = std::move(n);
      } else if (Peek().type == Token::kName && Peek().text == "is") {
        Next();
        auto n = MakeNode(NodeKind::kTest);
        n->negated = AcceptName("not");
        if (Peek().type == Token::kName) {
          n->name = Next().text;
        } else if (Peek().type == Token::kOp) {
          n->name = Next().text;
        } else {
          return Error("expected a test name after 'is'");
        }
        if (n->name == "none" || n->name == "true" || n->name == "false") {
          // fine: also literals
        }
        if (!KnownTests().count(n->name)) return Unsupported("the test '" + n->name + "'");
        n->children.push_back(std::move(node));
        if (AcceptOp("(")) {
          KVF_RETURN_IF_ERROR(ParseArgs(n.get()));
        } else {
          const Token& t = Peek();
          bool arg = t.type == Token::kString || t.type == Token::kInt || t.type == Token::kFloat ||
                     (t.type == Token::kName && t.text != "else" && t.text != "or" && t.text != "and" &&
                      t.text != "if" && t.text != "not" && t.text != "in" && t.text != "is");
          if (arg) {
            KVF_ASSIGN_OR_RETURN(NodePtr a, ParsePrimary());
            KVF_ASSIGN_OR_RETURN(a, ParsePostfix(std::move(a)));
            n->children.push_back(std::move(a));
            n->num_positional = 1;
          }
        }
        node = std::move(n);
      } else {
        return node;
      }
    }
  }

  std::vector<Segment> segments_;
  size_t seg_ = 0;
  int line_ = 1;
  std::vector<Token> toks_;
  size_t pos_ = 0;
  int depth_ = 0;
  int block_depth_ = 0;
};

}  // namespace

Template::~Template() = default;

StatusOr<std::unique_ptr<Template>> Template::Parse(std::string_view source) {
  KVF_ASSIGN_OR_RETURN(std::vector<Segment> segments, Segmentize(source));
  std::unique_ptr<Template> t(new Template());
  Parser parser(std::move(segments));
  KVF_RETURN_IF_ERROR(parser.ParseAll(&t->body_));
  return t;
}

}  // namespace kvferry::tokenizer::jinja
