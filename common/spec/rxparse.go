package spec

import (
	"errors"
	"fmt"
	"regexp/syntax"
	"strings"
	"unicode"
)

// A rule's regex as nginx's PCRE reads it, for the backtracking analysis
// (backtrack.go). regexp/syntax cannot give this tree: its parser already
// merges `\w|\d` into one class, `a|a` into `a` and factors `a|ab` into
// `a(?:|b)`, which hides exactly the alternatives PCRE backtracks over.
// The grammar that checkRegex allows is small (characters, escapes, '.',
// classes, groups, '|', '*', '+', '?' and their lazy forms, '^', '$'), so
// this reads the source itself, keeping each node's span for error
// messages, and asks regexp/syntax only which characters one atom
// matches. It runs only on a regex that checkRegex's grammar accepted and
// that regexp/syntax parsed.

// rxOp is the kind of an rxNode.
type rxOp uint8

const (
	rxChar   rxOp = iota // one character of a set: a literal, an escape such as \d, '.', a class
	rxAssert             // '^', '$', \b, \B: matches no text
	rxConcat             // a sequence, possibly empty
	rxAlt                // alternatives, two or more
	rxGroup              // ( … )
	rxStar               // '*' or '*?'
	rxPlus               // '+' or '+?'
	rxQuest              // '?' or '??'
)

// rxNode is one node of a parsed regex.
type rxNode struct {
	op     rxOp
	lo, hi int // the source text is s[lo:hi]
	subs   []*rxNode
	set    runeSet // rxChar: what it matches
	pos    int     // rxChar: its index among the regex's characters, in source order
}

// unbounded reports whether n repeats without bound ('*' or '+').
func (n *rxNode) unbounded() bool { return n.op == rxStar || n.op == rxPlus }

// repeat reports whether n is any repeat.
func (n *rxNode) repeat() bool { return n.unbounded() || n.op == rxQuest }

// rxParser reads one regex.
type rxParser struct {
	s     string
	i     int
	chars int // rxChar nodes so far
}

// parseRx reads s into a tree.
func parseRx(s string) (*rxNode, int, error) {
	p := &rxParser{s: s}
	n, err := p.alt()
	if err != nil {
		return nil, 0, err
	}
	if p.i != len(s) {
		return nil, 0, fmt.Errorf("unexpected %q at character %d", s[p.i], p.i+1)
	}
	return n, p.chars, nil
}

func (p *rxParser) alt() (*rxNode, error) {
	lo := p.i
	var branches []*rxNode
	for {
		c, err := p.concat()
		if err != nil {
			return nil, err
		}
		branches = append(branches, c)
		if p.i >= len(p.s) || p.s[p.i] != '|' {
			break
		}
		p.i++
	}
	if len(branches) == 1 {
		return branches[0], nil
	}
	return &rxNode{op: rxAlt, lo: lo, hi: p.i, subs: branches}, nil
}

func (p *rxParser) concat() (*rxNode, error) {
	n := &rxNode{op: rxConcat, lo: p.i}
	for p.i < len(p.s) && p.s[p.i] != '|' && p.s[p.i] != ')' {
		piece, err := p.piece()
		if err != nil {
			return nil, err
		}
		n.subs = append(n.subs, piece)
	}
	n.hi = p.i
	return n, nil
}

// piece is an atom and at most one repeat operator, greedy or lazy
// (regexp/syntax refuses a second one, as in a**).
func (p *rxParser) piece() (*rxNode, error) {
	lo := p.i
	n, err := p.atom()
	if err != nil {
		return nil, err
	}
	if p.i >= len(p.s) {
		return n, nil
	}
	op, ok := map[byte]rxOp{'*': rxStar, '+': rxPlus, '?': rxQuest}[p.s[p.i]]
	if !ok {
		return n, nil
	}
	if n.op == rxAssert {
		return nil, fmt.Errorf("a repeat of %q at character %d", p.s[n.lo:n.hi], lo+1)
	}
	p.i++
	if p.i < len(p.s) && p.s[p.i] == '?' {
		p.i++ // lazy: PCRE tries the same ways, in another order
	}
	if p.i < len(p.s) && strings.IndexByte("*+?", p.s[p.i]) >= 0 {
		return nil, fmt.Errorf("a repeat of a repeat at character %d", p.i+1)
	}
	return &rxNode{op: op, lo: lo, hi: p.i, subs: []*rxNode{n}}, nil
}

func (p *rxParser) atom() (*rxNode, error) {
	lo := p.i
	switch c := p.s[p.i]; c {
	case '(':
		p.i++
		sub, err := p.alt()
		if err != nil {
			return nil, err
		}
		if p.i >= len(p.s) || p.s[p.i] != ')' {
			return nil, fmt.Errorf("missing ')' for the '(' at character %d", lo+1)
		}
		p.i++
		return &rxNode{op: rxGroup, lo: lo, hi: p.i, subs: []*rxNode{sub}}, nil
	case '^', '$':
		p.i++
		return &rxNode{op: rxAssert, lo: lo, hi: p.i}, nil
	case '[':
		end, err := classEnd(p.s, p.i)
		if err != nil {
			return nil, err
		}
		p.i = end
	case '\\':
		if p.i+1 >= len(p.s) {
			return nil, errors.New("a trailing backslash")
		}
		p.i += 2
		if e := p.s[p.i-1]; e == 'b' || e == 'B' {
			return &rxNode{op: rxAssert, lo: lo, hi: p.i}, nil
		}
	case '*', '+', '?':
		return nil, fmt.Errorf("%q repeats nothing at character %d", c, lo+1)
	default:
		p.i++
	}
	set, err := charSet(p.s[lo:p.i])
	if err != nil {
		return nil, err
	}
	n := &rxNode{op: rxChar, lo: lo, hi: p.i, set: set, pos: p.chars}
	p.chars++
	return n, nil
}

// classEnd returns the index just past the class that starts at s[i]
// ('['), read as PCRE and regexp/syntax read it: a ']' right after "[" or
// "[^" is a literal, "[:name:]" is a named class and a backslash escapes
// the next character.
func classEnd(s string, i int) (int, error) {
	j := i + 1
	if j < len(s) && s[j] == '^' {
		j++
	}
	if j < len(s) && s[j] == ']' {
		j++
	}
	for j < len(s) {
		switch {
		case s[j] == '\\':
			j += 2
		case s[j] == '[' && j+1 < len(s) && s[j+1] == ':':
			k := strings.Index(s[j+2:], ":]")
			if k < 0 {
				return 0, fmt.Errorf("an unclosed named class at character %d", j+1)
			}
			j += 2 + k + 2
		case s[j] == ']':
			return j + 1, nil
		default:
			j++
		}
	}
	return 0, fmt.Errorf("missing ']' for the '[' at character %d", i+1)
}

// charSet returns the characters that one atom (a literal, an escape,
// '.', a class) matches, as regexp/syntax reads it with the Perl flags
// checkRegex compiles with: '.' is any character but a newline, as in
// PCRE; \d \w \s are ASCII, as in PCRE without UCP.
func charSet(atom string) (runeSet, error) {
	re, err := syntax.Parse(atom, syntax.Perl)
	if err != nil {
		return nil, fmt.Errorf("%q: %w", atom, err)
	}
	switch {
	case re.Op == syntax.OpLiteral && len(re.Rune) == 1:
		return runeSet{re.Rune[0], re.Rune[0]}, nil
	case re.Op == syntax.OpCharClass:
		return runeSet(re.Rune).normal(), nil
	case re.Op == syntax.OpAnyCharNotNL:
		return runeSet{0, '\n' - 1, '\n' + 1, unicode.MaxRune}, nil
	case re.Op == syntax.OpAnyChar:
		return anyRune, nil
	}
	return nil, fmt.Errorf("%q is not one character", atom)
}

// runeSet is a set of characters: sorted, disjoint, inclusive ranges,
// each as two runes (lo, hi), as in syntax.Regexp's Rune of a class.
type runeSet []rune

// anyRune is every character.
var anyRune = runeSet{0, unicode.MaxRune}

// normal returns s sorted with overlapping and adjacent ranges merged.
func (s runeSet) normal() runeSet {
	pairs := make([][2]rune, 0, len(s)/2)
	for i := 0; i+1 < len(s); i += 2 {
		pairs = append(pairs, [2]rune{s[i], s[i+1]})
	}
	for i := 1; i < len(pairs); i++ { // insertion sort: sets are small
		for j := i; j > 0 && pairs[j][0] < pairs[j-1][0]; j-- {
			pairs[j], pairs[j-1] = pairs[j-1], pairs[j]
		}
	}
	out := make(runeSet, 0, len(s))
	for _, p := range pairs {
		if n := len(out); n > 0 && p[0] <= out[n-1]+1 {
			out[n-1] = max(out[n-1], p[1])
			continue
		}
		out = append(out, p[0], p[1])
	}
	return out
}

// union returns the characters of s or t.
func (s runeSet) union(t runeSet) runeSet {
	return append(append(runeSet{}, s...), t...).normal()
}

// intersect returns the characters of both s and t.
func (s runeSet) intersect(t runeSet) runeSet {
	var out runeSet
	for i, j := 0, 0; i+1 < len(s) && j+1 < len(t); {
		lo, hi := max(s[i], t[j]), min(s[i+1], t[j+1])
		if lo <= hi {
			out = append(out, lo, hi)
		}
		if s[i+1] < t[j+1] {
			i += 2
		} else {
			j += 2
		}
	}
	return out
}

// meets reports whether s and t share a character.
func (s runeSet) meets(t runeSet) bool {
	for i, j := 0, 0; i+1 < len(s) && j+1 < len(t); {
		if max(s[i], t[j]) <= min(s[i+1], t[j+1]) {
			return true
		}
		if s[i+1] < t[j+1] {
			i += 2
		} else {
			j += 2
		}
	}
	return false
}

// sample returns one character of s, a letter or a digit when it has one,
// else a printable one, for an example in an error message.
func (s runeSet) sample() rune {
	for _, want := range []struct{ lo, hi rune }{{'a', 'z'}, {'0', '9'}, {'A', 'Z'}, {'!', '~'}} {
		for i := 0; i+1 < len(s); i += 2 {
			if lo := max(s[i], want.lo); lo <= min(s[i+1], want.hi) {
				return lo
			}
		}
	}
	if len(s) == 0 {
		return unicode.ReplacementChar
	}
	return s[0]
}
