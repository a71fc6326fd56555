package spec

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Backtracking. nginx matches regex locations and header maps with PCRE,
// a backtracking engine, inside a worker's event loop: a regex that can
// match one text in many ways makes PCRE try them all on a text that
// fails, and every connection of that worker waits meanwhile (measured
// by bench/regex: `^/(\w+)+$` holds a worker 143 ms on 24 characters,
// `^/\w*\w*\w*x` 9 s with pcre_jit on an 8 KiB path). checkBacktracking
// refuses, by the structure of the regex as PCRE reads it (rxparse.go):
//
//   - a repeat ('*', '+', '?') or an empty alternative inside an
//     unbounded repeat: `(\w+)+`, `(a?)*`, `(a|)+` (star height above one);
//   - an unbounded repeat whose iterations can match one text in two
//     ways: `(a|a)+`, `(\w|\d)+`, `(a|aa)+`. Both give exponentially
//     many ways. The check is exact: it searches the repeat's position
//     automaton for two paths that read the same text;
//   - two unbounded repeats that can both match one text and everything
//     between them: `\w*\w*`, `.*a.*b`; they give quadratically many
//     ways (cubically for three, …). An unanchored regex counts as one
//     led by a repeat of any character, since nginx tries it from every
//     position. This check is exact when each repeat is of one character
//     or class, and otherwise may refuse a regex whose repeats share
//     characters in a way no single text uses.
//
// What remains is linear in the text, or a product of disjoint repeats
// (`^/v[0-9]+/[a-z]+$`) that PCRE walks once.

// maxBacktrackWork bounds the analysis of one regex (automaton edges
// visited), so that a hostile regex cannot make the check itself slow:
// ordinary regexes take a few hundred, the largest found for 256
// characters (52 two-character alternatives repeated) 143,000, about 2 ms.
const maxBacktrackWork = 1 << 20

var errTooIntricate = errors.New("it is too intricate to check for backtracking: split it into simpler rules")

// checkBacktracking returns why nginx's PCRE could backtrack on s for
// long, or nil. s must have passed checkRegex's grammar and compile.
func checkBacktracking(s string) error { return checkBacktrackingWithin(s, maxBacktrackWork) }

// checkBacktrackingWithin is checkBacktracking with a work budget.
func checkBacktrackingWithin(s string, budget int) error {
	root, chars, err := parseRx(s)
	if err != nil {
		return fmt.Errorf("cannot read it as nginx's PCRE would: %w", err)
	}
	if err := checkNesting(s, root); err != nil {
		return err
	}
	a := newAutomaton(s, chars, budget)
	a.build(root)
	for _, l := range a.loops {
		w, err := a.ambiguous(l)
		if err != nil {
			return err
		}
		if w != "" {
			return ambiguousError(s, l.node, w)
		}
	}
	return a.checkSequences(anchored(s, root))
}

// checkNesting refuses a repeat, or an alternative that can match no
// text, inside an unbounded repeat.
func checkNesting(s string, n *rxNode) error {
	if !n.unbounded() {
		for _, sub := range n.subs {
			if err := checkNesting(s, sub); err != nil {
				return err
			}
		}
		return nil
	}
	body := n.subs[0]
	if inner := find(body, (*rxNode).repeat); inner != nil {
		return nestedError(s, n, inner)
	}
	if nullable(body) {
		return fmt.Errorf("`%s` repeats %s that can match no text, which nginx's regex engine (PCRE) can repeat in exponentially many ways: make every alternative match at least one character", snip(s, n), describe(s, body))
	}
	if empty := find(body, func(x *rxNode) bool { return x.op == rxAlt && slices.ContainsFunc(x.subs, nullable) }); empty != nil {
		return fmt.Errorf("`%s` holds `%s`, whose empty alternative is an optional part inside a repeat, which nginx's regex engine (PCRE) can try in exponentially many ways: make every alternative match at least one character", snip(s, n), snip(s, empty))
	}
	return nil
}

// find returns the first node under n (n included), in source order, for
// which ok holds.
func find(n *rxNode, ok func(*rxNode) bool) *rxNode {
	if ok(n) {
		return n
	}
	for _, sub := range n.subs {
		if x := find(sub, ok); x != nil {
			return x
		}
	}
	return nil
}

// nullable reports whether n can match the empty text.
func nullable(n *rxNode) bool {
	switch n.op {
	case rxChar:
		return false
	case rxAssert, rxStar, rxQuest:
		return true
	case rxAlt:
		for _, sub := range n.subs {
			if nullable(sub) {
				return true
			}
		}
		return false
	}
	for _, sub := range n.subs { // concat, group, plus
		if !nullable(sub) {
			return false
		}
	}
	return true
}

// unwrap returns n without the groups around it.
func unwrap(n *rxNode) *rxNode {
	for n.op == rxGroup || (n.op == rxConcat && len(n.subs) == 1) {
		n = n.subs[0]
	}
	return n
}

func snip(s string, n *rxNode) string { return s[n.lo:n.hi] }

// describe names a repeat's body in a message.
func describe(s string, body *rxNode) string {
	if t := snip(s, body); t != "" {
		return "`" + t + "`"
	}
	return "an empty group"
}

// nestedError explains a repeat inside a repeat, with the one repeat that
// matches the same texts when the outer repeats only the inner.
func nestedError(s string, outer, inner *rxNode) error {
	if unwrap(outer.subs[0]) == inner {
		op := "*"
		if outer.op == rxPlus && inner.op == rxPlus {
			op = "+"
		}
		return fmt.Errorf("`%s` repeats a repeat (`%s`), and nginx's regex engine (PCRE) tries every way to split a text between the two (exponentially many): write `%s%s`",
			snip(s, outer), snip(s, inner), snip(s, inner.subs[0]), op)
	}
	return fmt.Errorf("`%s` holds a repeat (`%s`) inside a repeat, and nginx's regex engine (PCRE) can try exponentially many ways to match a text with it: a repeated group may hold only characters, classes and alternatives of them, such as `([a-z0-9]|-)+`, with no `*`, `+` or `?` inside",
		snip(s, outer), snip(s, inner))
}

// ambiguousError explains a repeat that matches witness two ways,
// suggesting one class when its alternatives are single characters.
func ambiguousError(s string, loop *rxNode, witness string) error {
	hint := "make the alternatives such that a text splits into them in one way only"
	if alt := unwrap(loop.subs[0]); alt.op == rxAlt {
		if class, ok := mergeClass(s, alt); ok {
			hint = fmt.Sprintf("repeat `%s` instead", class)
		}
	}
	return fmt.Errorf("`%s` can match %q in more than one way, and nginx's regex engine (PCRE) tries every way (exponentially many on a text that fails to match): %s",
		snip(s, loop), witness, hint)
}

// mergeClass returns the class that matches what alt's alternatives
// match, when each is one literal, escape or non-negated class.
func mergeClass(s string, alt *rxNode) (string, bool) {
	var parts []string
	for _, br := range alt.subs {
		c := unwrap(br)
		if c.op != rxChar {
			return "", false
		}
		t := snip(s, c)
		switch {
		case t == ".", strings.HasPrefix(t, "[^"):
			return "", false
		case strings.HasPrefix(t, "["):
			t = t[1 : len(t)-1]
		case len(t) == 1 && strings.ContainsRune(`]-^\[`, rune(t[0])):
			t = `\` + t
		}
		if !slices.Contains(parts, t) {
			parts = append(parts, t)
		}
	}
	if len(parts) == 1 && len(parts[0]) <= 2 && !strings.Contains(parts[0], "-") {
		return parts[0], true // one literal or escape, repeated: itself
	}
	return "[" + strings.Join(parts, "") + "]", true
}

// anchored reports whether every top-level alternative of n starts with
// '^', so that nginx tries it only at the start of the text.
func anchored(s string, n *rxNode) bool {
	branches := []*rxNode{n}
	if n.op == rxAlt {
		branches = n.subs
	}
	for _, br := range branches {
		if br.op != rxConcat || len(br.subs) == 0 || br.subs[0].op != rxAssert || s[br.subs[0].lo] != '^' {
			return false
		}
	}
	return true
}
