#include "tokenizer/regex.h"

#include <limits>
#include <memory>
#include <string>

#include "core/error.h"
#include "tokenizer/unicode.h"

namespace qforge {
namespace {

constexpr std::uint32_t kUnbounded = std::numeric_limits<std::uint32_t>::max();

std::uint32_t bit(UnicodeCategory c) {
  return 1u << static_cast<unsigned>(c);
}

// Bitmask of the general categories named by \p{name}: one letter (major class) or two.
bool category_mask(std::string_view name, std::uint32_t& mask) {
  static constexpr std::string_view kNames[] = {
      "Cn", "Cc", "Cf", "Co", "Cs", "Ll", "Lm", "Lo", "Lt", "Lu", "Mc", "Me", "Mn", "Nd", "Nl",
      "No", "Pc", "Pd", "Pe", "Pf", "Pi", "Po", "Ps", "Sc", "Sk", "Sm", "So", "Zl", "Zp", "Zs"};
  mask = 0;
  for (std::uint32_t i = 0; i < std::size(kNames); ++i) {
    const bool hit = name.size() == 1 ? kNames[i][0] == name[0] : kNames[i] == name;
    if (hit) mask |= 1u << i;
  }
  return mask != 0 && (name.size() == 1 || name.size() == 2);
}

struct Node {
  enum class Kind { Empty, Class, Concat, Alt, Repeat, Look, Begin, End } kind = Kind::Empty;
  std::uint32_t class_index = 0;
  std::uint32_t min = 1, max = 1;
  bool negative = false;
  std::vector<std::unique_ptr<Node>> children;
};

class Parser {
 public:
  Parser(std::string_view pattern, std::vector<CodepointRegex::CharClass>& classes)
      : pattern_(pattern), classes_(classes) {
    for (const auto& d : utf8_decode_lenient(pattern)) {
      if (d.cp >= kInvalidCodepointBase) fail("regex '{}': invalid UTF-8", pattern_);
      cps_.push_back(d.cp);
    }
  }

  std::unique_ptr<Node> parse() {
    auto node = parse_alternation();
    if (pos_ != cps_.size()) error("unbalanced ')'");
    return node;
  }

 private:
  [[noreturn]] void error(std::string_view what) const {
    fail("regex '{}': {} at codepoint {}", pattern_, what, pos_);
  }
  bool at_end() const { return pos_ >= cps_.size(); }
  std::uint32_t peek() const { return at_end() ? 0 : cps_[pos_]; }
  std::uint32_t next() {
    if (at_end()) error("unexpected end of pattern");
    return cps_[pos_++];
  }

  std::unique_ptr<Node> make(Node::Kind kind) {
    auto n = std::make_unique<Node>();
    n->kind = kind;
    return n;
  }

  std::unique_ptr<Node> parse_alternation() {
    auto alt = make(Node::Kind::Alt);
    alt->children.push_back(parse_concat());
    while (!at_end() && peek() == '|') {
      ++pos_;
      alt->children.push_back(parse_concat());
    }
    if (alt->children.size() == 1) return std::move(alt->children[0]);
    return alt;
  }

  std::unique_ptr<Node> parse_concat() {
    auto cat = make(Node::Kind::Concat);
    while (!at_end() && peek() != '|' && peek() != ')') cat->children.push_back(parse_repeat());
    if (cat->children.size() == 1) return std::move(cat->children[0]);
    return cat;
  }

  std::uint32_t parse_number() {
    std::uint32_t value = 0;
    bool any = false;
    while (!at_end() && peek() >= '0' && peek() <= '9') {
      value = value * 10 + (next() - '0');
      if (value > 1000) error("repeat count too large");
      any = true;
    }
    if (!any) error("expected a number");
    return value;
  }

  std::unique_ptr<Node> parse_repeat() {
    auto atom = parse_atom();
    while (!at_end()) {
      std::uint32_t min = 0, max = 0;
      const std::uint32_t c = peek();
      if (c == '?') {
        min = 0;
        max = 1;
        ++pos_;
      } else if (c == '*') {
        min = 0;
        max = kUnbounded;
        ++pos_;
      } else if (c == '+') {
        min = 1;
        max = kUnbounded;
        ++pos_;
      } else if (c == '{') {
        ++pos_;
        min = max = parse_number();
        if (peek() == ',') {
          ++pos_;
          max = peek() == '}' ? kUnbounded : parse_number();
        }
        if (next() != '}') error("expected '}'");
        if (max < min) error("bad repeat bounds");
      } else {
        break;
      }
      if (!at_end() && (peek() == '?' || peek() == '+')) error("lazy/possessive quantifiers");
      if (atom->kind == Node::Kind::Begin || atom->kind == Node::Kind::End ||
          atom->kind == Node::Kind::Look)
        error("quantified assertion");
      auto rep = make(Node::Kind::Repeat);
      rep->min = min;
      rep->max = max;
      rep->children.push_back(std::move(atom));
      atom = std::move(rep);
    }
    return atom;
  }

  std::uint32_t add_class(CodepointRegex::CharClass cls) {
    for (std::uint32_t cp = 0; cp < 128; ++cp)
      if (cls.matches_slow(cp)) cls.ascii[cp >> 6] |= std::uint64_t{1} << (cp & 63);
    classes_.push_back(std::move(cls));
    return static_cast<std::uint32_t>(classes_.size() - 1);
  }

  std::unique_ptr<Node> class_node(CodepointRegex::CharClass cls) {
    auto n = make(Node::Kind::Class);
    n->class_index = add_class(std::move(cls));
    return n;
  }

  // \x{HHHH} (after the 'x'): 1 to 6 hex digits naming a codepoint.
  std::uint32_t parse_hex_escape() {
    if (next() != '{') error("expected '{' after \\x");
    std::uint32_t value = 0;
    int digits = 0;
    for (std::uint32_t c = next(); c != '}'; c = next()) {
      int d = -1;
      if (c >= '0' && c <= '9') d = static_cast<int>(c - '0');
      if (c >= 'a' && c <= 'f') d = static_cast<int>(c - 'a' + 10);
      if (c >= 'A' && c <= 'F') d = static_cast<int>(c - 'A' + 10);
      if (d < 0 || ++digits > 6) error("bad \\x{...} escape");
      value = value * 16 + static_cast<std::uint32_t>(d);
    }
    if (digits == 0 || value > 0x10FFFF) error("bad \\x{...} escape");
    return value;
  }

  // After a backslash: adds the escape to `cls` if it is a class escape (\s, \p{..}, ...) and
  // returns true; otherwise stores the literal codepoint in `literal` and returns false.
  bool parse_escape(CodepointRegex::CharClass& cls, std::uint32_t& literal) {
    const std::uint32_t c = next();
    switch (c) {
      case 's':
        cls.whitespace = true;
        return true;
      case 'S':
        cls.non_whitespace = true;
        return true;
      case 'd':
        cls.ranges.emplace_back('0', '9');
        return true;
      case 'p':
      case 'P': {
        if (next() != '{') error("expected '{' after \\p");
        std::string name;
        while (peek() != '}') name.push_back(static_cast<char>(next()));
        ++pos_;
        std::uint32_t mask = 0;
        if (!category_mask(name, mask)) error("unknown Unicode category");
        (c == 'p' ? cls.categories : cls.not_categories) |= mask;
        return true;
      }
      case 'x':
        literal = parse_hex_escape();
        return false;
      case 'r':
        literal = '\r';
        return false;
      case 'n':
        literal = '\n';
        return false;
      case 't':
        literal = '\t';
        return false;
      case 'f':
        literal = '\f';
        return false;
      case 'v':
        literal = '\v';
        return false;
      default:
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
          error("unsupported escape");
        literal = c;
        return false;
    }
  }

  std::unique_ptr<Node> parse_bracket() {
    CodepointRegex::CharClass cls;
    if (peek() == '^') {
      cls.negated = true;
      ++pos_;
    }
    bool first = true;
    while (true) {
      if (at_end()) error("unterminated '['");
      std::uint32_t c = next();
      if (c == ']' && !first) break;
      first = false;
      std::uint32_t lo = c;
      if (c == '\\') {
        if (parse_escape(cls, lo)) continue;
      }
      if (peek() == '-' && pos_ + 1 < cps_.size() && cps_[pos_ + 1] != ']') {
        ++pos_;
        std::uint32_t hi = next();
        if (hi == '\\') {
          CodepointRegex::CharClass ignored;
          if (parse_escape(ignored, hi)) error("class escape as range end");
        }
        if (hi < lo) error("reversed range");
        cls.ranges.emplace_back(lo, hi);
      } else {
        cls.ranges.emplace_back(lo, lo);
      }
    }
    return class_node(std::move(cls));
  }

  std::unique_ptr<Node> parse_atom() {
    const std::uint32_t c = next();
    switch (c) {
      case '(': {
        std::unique_ptr<Node> look;
        if (peek() == '?') {
          ++pos_;
          const std::uint32_t kind = next();
          if (kind == '=' || kind == '!') {
            look = make(Node::Kind::Look);
            look->negative = kind == '!';
          } else if (kind != ':') {
            error("unsupported group kind");
          }
        }
        auto inner = parse_alternation();
        if (next() != ')') error("expected ')'");
        if (!look) return inner;
        look->children.push_back(std::move(inner));
        return look;
      }
      case '[':
        return parse_bracket();
      case '.': {
        CodepointRegex::CharClass cls;
        cls.negated = true;
        cls.ranges.emplace_back('\n', '\n');
        return class_node(std::move(cls));
      }
      case '^':
        return make(Node::Kind::Begin);
      case '$':
        return make(Node::Kind::End);
      case ')':
      case '|':
      case '*':
      case '+':
      case '?':
      case '{':
        --pos_;
        error("unexpected metacharacter");
      case '\\': {
        CodepointRegex::CharClass cls;
        std::uint32_t literal = 0;
        if (!parse_escape(cls, literal)) cls.ranges.emplace_back(literal, literal);
        return class_node(std::move(cls));
      }
      default: {
        CodepointRegex::CharClass cls;
        cls.ranges.emplace_back(c, c);
        return class_node(std::move(cls));
      }
    }
  }

  std::string_view pattern_;
  std::vector<CodepointRegex::CharClass>& classes_;
  std::vector<std::uint32_t> cps_;
  std::size_t pos_ = 0;
};

bool can_match_empty(const Node& n) {
  switch (n.kind) {
    case Node::Kind::Class:
      return false;
    case Node::Kind::Concat:
      for (const auto& c : n.children)
        if (!can_match_empty(*c)) return false;
      return true;
    case Node::Kind::Alt:
      for (const auto& c : n.children)
        if (can_match_empty(*c)) return true;
      return false;
    case Node::Kind::Repeat:
      return n.min == 0 || can_match_empty(*n.children[0]);
    default:
      return true;
  }
}

class Compiler {
 public:
  using Inst = CodepointRegex::Inst;
  using Op = CodepointRegex::Op;
  explicit Compiler(std::vector<Inst>& program) : program_(program) {}

  void compile(const Node& n) {
    switch (n.kind) {
      case Node::Kind::Empty:
        break;
      case Node::Kind::Class:
        emit({Op::Class, n.class_index});
        break;
      case Node::Kind::Begin:
        emit({Op::AssertBegin});
        break;
      case Node::Kind::End:
        emit({Op::AssertEnd});
        break;
      case Node::Kind::Concat:
        for (const auto& c : n.children) compile(*c);
        break;
      case Node::Kind::Alt: {
        std::vector<std::size_t> jumps;
        for (std::size_t i = 0; i < n.children.size(); ++i) {
          if (i + 1 < n.children.size()) {
            const std::size_t split = emit({Op::Split});
            program_[split].a = here();
            compile(*n.children[i]);
            jumps.push_back(emit({Op::Jump}));
            program_[split].b = here();
          } else {
            compile(*n.children[i]);
          }
        }
        for (std::size_t j : jumps) program_[j].a = here();
        break;
      }
      case Node::Kind::Look: {
        const std::size_t look = emit({n.negative ? Op::NegLookAhead : Op::LookAhead});
        program_[look].a = here();
        compile(*n.children[0]);
        emit({Op::Match});
        program_[look].b = here();
        break;
      }
      case Node::Kind::Repeat:
        compile_repeat(n);
        break;
    }
  }

 private:
  std::uint32_t here() const { return static_cast<std::uint32_t>(program_.size()); }
  std::size_t emit(Inst inst) {
    program_.push_back(inst);
    return program_.size() - 1;
  }

  void compile_repeat(const Node& n) {
    const Node& body = *n.children[0];
    if (body.kind == Node::Kind::Class) {
      // A repeated single class needs no per-character backtracking entries.
      Inst run{Op::Run, body.class_index};
      run.min = n.min;
      run.max = n.max;
      emit(run);
      return;
    }
    for (std::uint32_t i = 0; i < n.min; ++i) compile(body);
    if (n.max == kUnbounded) {
      if (can_match_empty(body)) fail("regex: unbounded repeat of a sub-pattern that can be empty");
      const std::size_t loop = emit({Op::Split});
      program_[loop].a = here();
      compile(body);
      emit({Op::Jump, static_cast<std::uint32_t>(loop)});
      program_[loop].b = here();
      return;
    }
    std::vector<std::size_t> splits;
    for (std::uint32_t i = n.min; i < n.max; ++i) {
      const std::size_t split = emit({Op::Split});
      program_[split].a = here();
      splits.push_back(split);
      compile(body);
    }
    for (std::size_t s : splits) program_[s].b = here();
  }

  std::vector<Inst>& program_;
};

struct Backtrack {
  std::uint32_t pc;
  bool is_run;
  std::size_t pos;
  std::size_t low;  // Run entries: smallest end position still to try
};

}  // namespace

bool CodepointRegex::CharClass::matches_slow(std::uint32_t cp) const {
  bool hit = false;
  for (const auto& [lo, hi] : ranges) {
    if (cp >= lo && cp <= hi) {
      hit = true;
      break;
    }
  }
  if (!hit && (categories | not_categories) != 0) {
    const std::uint32_t cat = bit(unicode_category(cp));
    const bool valid = cp < kInvalidCodepointBase;
    hit =
        (valid && (categories & cat) != 0) || (not_categories != 0 && (not_categories & cat) == 0);
  }
  if (!hit && (whitespace || non_whitespace)) {
    const bool ws = unicode_is_whitespace(cp);
    hit = (whitespace && ws) || (non_whitespace && !ws);
  }
  return hit != negated;
}

bool CodepointRegex::CharClass::matches(std::uint32_t cp) const {
  if (cp < 128) return (ascii[cp >> 6] >> (cp & 63)) & 1;
  return matches_slow(cp);
}

CodepointRegex::CodepointRegex(std::string_view pattern) {
  Parser parser(pattern, classes_);
  const auto root = parser.parse();
  Compiler compiler(program_);
  compiler.compile(*root);
  program_.push_back({Op::Match});
}

bool CodepointRegex::run(std::span<const std::uint32_t> subject, std::size_t begin, std::size_t end,
                         std::uint32_t pc, std::size_t pos, std::size_t& match_end) const {
  thread_local std::vector<Backtrack> stack;
  const std::size_t base = stack.size();
  const auto backtrack = [&]() -> bool {
    while (stack.size() > base) {
      Backtrack& top = stack.back();
      if (top.is_run) {
        const std::size_t p = --top.pos;
        pc = top.pc;
        if (p <= top.low) stack.pop_back();
        pos = p;
        return true;
      }
      pc = top.pc;
      pos = top.pos;
      stack.pop_back();
      return true;
    }
    return false;
  };
  while (true) {
    const Inst& inst = program_[pc];
    bool ok = true;
    switch (inst.op) {
      case Op::Class:
        if (pos < end && classes_[inst.a].matches(subject[pos])) {
          ++pos;
          ++pc;
        } else {
          ok = false;
        }
        break;
      case Op::Run: {
        const CharClass& cls = classes_[inst.a];
        const std::size_t start = pos;
        const std::size_t limit =
            inst.max == kUnbounded ? end : std::min<std::size_t>(end, start + inst.max);
        while (pos < limit && cls.matches(subject[pos])) ++pos;
        if (pos - start < inst.min) {
          ok = false;
          break;
        }
        ++pc;
        if (pos - start > inst.min) stack.push_back({pc, true, pos, start + inst.min});
        break;
      }
      case Op::Split:
        stack.push_back({inst.b, false, pos, 0});
        pc = inst.a;
        break;
      case Op::Jump:
        pc = inst.a;
        break;
      case Op::Match:
        match_end = pos;
        stack.resize(base);
        return true;
      case Op::AssertBegin:
        ok = pos == begin;
        ++pc;
        break;
      case Op::AssertEnd:
        ok = pos == end;
        ++pc;
        break;
      case Op::LookAhead:
      case Op::NegLookAhead: {
        std::size_t ignored = 0;
        const bool found = run(subject, begin, end, inst.a, pos, ignored);
        ok = found == (inst.op == Op::LookAhead);
        pc = inst.b;
        break;
      }
    }
    if (!ok && !backtrack()) return false;
  }
}

bool CodepointRegex::search(std::span<const std::uint32_t> subject, std::size_t begin,
                            std::size_t end, std::size_t from, Match& match) const {
  // When the pattern starts with an unbounded greedy run of class C and fails at `start`, it
  // also fails at every later start inside the same run of C characters: those attempts can
  // only try a subset of the end positions already tried (nothing depends on where the match
  // began). Skipping them keeps patterns such as \s+$ linear on long whitespace runs.
  const Inst& first = program_[0];
  const CharClass* leading_run =
      first.op == Op::Run && first.max == kUnbounded ? &classes_[first.a] : nullptr;
  for (std::size_t start = from; start < end; ++start) {
    std::size_t match_end = 0;
    if (run(subject, begin, end, 0, start, match_end) && match_end > start) {
      match.begin = start;
      match.end = match_end;
      return true;
    }
    if (leading_run != nullptr && leading_run->matches(subject[start])) {
      while (start + 1 < end && leading_run->matches(subject[start + 1])) ++start;
    }
  }
  return false;
}

void CodepointRegex::split(std::span<const std::uint32_t> subject, std::size_t begin,
                           std::size_t end, std::vector<std::size_t>& cuts) const {
  std::size_t pos = begin;
  Match m;
  while (pos < end && search(subject, begin, end, pos, m)) {
    if (m.begin > pos) cuts.push_back(m.begin);  // the gap before the match is its own piece
    cuts.push_back(m.end);
    pos = m.end;
  }
  if (pos < end) cuts.push_back(end);
}

}  // namespace qforge
