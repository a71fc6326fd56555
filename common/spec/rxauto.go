package spec

import (
	"fmt"
	"iter"
	"math/bits"
	"slices"
	"strings"
)

// automaton is the position (Glushkov) automaton of a parsed regex: one
// state per character atom, entered when that atom reads a character;
// follow[p] holds the atoms that can read the character after p. The
// backtracking checks (backtrack.go) are searches over it.
type automaton struct {
	s      string
	sets   []runeSet // what each atom reads; the last entry is the search loop's
	follow []bitset
	first  bitset // the atoms that can read a text's first character
	loops  []*loop
	budget int // edges left to visit
}

// loop is one unbounded repeat: its atoms, and the loop back from the
// last of them to the first.
type loop struct {
	node        *rxNode
	body        bitset
	first, last bitset
	set         runeSet // every character its atoms read
}

// newAutomaton makes room for chars atoms and the search loop.
func newAutomaton(s string, chars, budget int) *automaton {
	a := &automaton{s: s, sets: make([]runeSet, chars+1), follow: make([]bitset, chars+1), budget: budget}
	for i := range a.follow {
		a.follow[i] = a.bits()
	}
	return a
}

func (a *automaton) bits() bitset { return make(bitset, (len(a.sets)+63)/64) }

// build adds n's atoms and edges, and sets a.first; see node.
func (a *automaton) build(root *rxNode) {
	_, a.first, _ = a.node(root)
}

// node returns whether n can match the empty text, and the atoms that can
// read its first and last characters; it records the follow edges inside
// n and the loops.
func (a *automaton) node(n *rxNode) (empty bool, first, last bitset) {
	first, last = a.bits(), a.bits()
	switch n.op {
	case rxChar:
		a.sets[n.pos] = n.set
		first.add(n.pos)
		last.add(n.pos)
		return false, first, last
	case rxAssert:
		return true, first, last
	case rxGroup:
		return a.node(n.subs[0])
	case rxAlt:
		for _, sub := range n.subs {
			e, f, l := a.node(sub)
			empty = empty || e
			first.or(f)
			last.or(l)
		}
		return empty, first, last
	case rxConcat:
		empty = true
		for _, sub := range n.subs {
			e, f, l := a.node(sub)
			for p := range last.all() {
				a.follow[p].or(f)
			}
			if empty {
				first.or(f)
			}
			if !e {
				last = a.bits()
			}
			last.or(l)
			empty = empty && e
		}
		return empty, first, last
	}
	// A repeat.
	e, f, l := a.node(n.subs[0])
	if n.unbounded() {
		lp := &loop{node: n, body: a.bits(), first: f, last: l}
		for x := range charsOf(n.subs[0]) {
			lp.body.add(x.pos)
			lp.set = lp.set.union(x.set)
		}
		for p := range l.all() {
			a.follow[p].or(f)
		}
		a.loops = append(a.loops, lp)
	}
	return e || n.op != rxPlus, f, l
}

// charsOf yields the character atoms under n.
func charsOf(n *rxNode) iter.Seq[*rxNode] {
	return func(yield func(*rxNode) bool) {
		var walk func(*rxNode) bool
		walk = func(x *rxNode) bool {
			if x.op == rxChar {
				return yield(x)
			}
			for _, sub := range x.subs {
				if !walk(sub) {
					return false
				}
			}
			return true
		}
		walk(n)
	}
}

// spend counts one edge visited and fails past the budget.
func (a *automaton) spend() error {
	a.budget--
	if a.budget < 0 {
		return errTooIntricate
	}
	return nil
}

// ambiguous returns a text that l's iterations (one or more) can match
// along two different paths of atoms, or "" when there is none. It
// searches pairs of paths in step: a state is two atoms (0 for the
// start) and whether the paths have parted, and a step reads one
// character both atoms match. checkNesting has ensured that l's body
// holds no repeat and no empty alternative, so two paths of atoms that
// are the same are the same match.
func (a *automaton) ambiguous(l *loop) (string, error) {
	atoms := slices.Collect(l.body.all())
	local := map[int]int{}
	for k, p := range atoms {
		local[p] = k + 1
	}
	m := len(atoms) + 1
	succ := make([][]int, m)
	for p := range l.first.all() {
		succ[0] = append(succ[0], local[p])
	}
	for k, p := range atoms {
		for q := range a.follow[p].all() {
			if l.body.has(q) {
				succ[k+1] = append(succ[k+1], local[q])
			}
		}
	}
	final := func(k int) bool { return k > 0 && l.last.has(atoms[k-1]) }
	set := func(k int) runeSet { return a.sets[atoms[k-1]] }

	id := func(p, q, parted int) int { return (p*m+q)*2 + parted }
	parent := make([]int32, m*m*2)
	for i := range parent {
		parent[i] = -1
	}
	parent[0] = 0
	queue := []int{0}
	for len(queue) > 0 {
		st := queue[0]
		queue = queue[1:]
		p, q, parted := st/2/m, st/2%m, st%2
		for _, p2 := range succ[p] {
			for _, q2 := range succ[q] {
				if err := a.spend(); err != nil {
					return "", err
				}
				if !set(p2).meets(set(q2)) {
					continue
				}
				d := parted
				if p2 != q2 {
					d = 1
				}
				next := id(p2, q2, d)
				if parent[next] >= 0 {
					continue
				}
				parent[next] = int32(st)
				if d == 1 && final(p2) && final(q2) {
					return a.text(next, m, set, parent), nil
				}
				queue = append(queue, next)
			}
		}
	}
	return "", nil
}

// text spells the characters read on the way to state st.
func (a *automaton) text(st, m int, set func(int) runeSet, parent []int32) string {
	var out []rune
	for st != 0 {
		p, q := st/2/m, st/2%m
		out = append(out, set(p).intersect(set(q)).sample())
		st = int(parent[st])
	}
	slices.Reverse(out)
	return string(out)
}

// checkSequences refuses two loops that can both read one character and
// be joined by a path of atoms that all can read it: then a text of that
// character splits between the two loops in as many ways as it is long,
// and PCRE tries each. Unless the regex is anchored, nginx runs it from
// every position, as if it began with a loop over every character: that
// loop is checked as well.
func (a *automaton) checkSequences(anchored bool) error {
	loops := a.loops
	var search *loop
	if !anchored {
		v := len(a.sets) - 1
		a.sets[v] = anyRune
		a.follow[v] = a.first.clone()
		a.follow[v].add(v)
		search = &loop{body: a.bits(), first: a.bits(), last: a.bits(), set: anyRune}
		search.body.add(v)
		search.first.add(v)
		search.last.add(v)
		loops = append([]*loop{search}, loops...)
	}
	for _, l1 := range loops {
		for _, l2 := range a.loops {
			if l1 == l2 {
				continue
			}
			both := l1.set.intersect(l2.set)
			if len(both) == 0 {
				continue
			}
			joined, err := a.joined(l1, l2, both)
			if err != nil {
				return err
			}
			if !joined {
				continue
			}
			if l1 == search {
				return fmt.Errorf("it is not anchored, so nginx tries it from every position of the text, and `%s` (at character %d) can match the same characters from many of them: each try rescans the rest of the text, n² steps for n characters (without pcre_jit, hundreds of milliseconds of a worker for an 8 KiB path): start it with `^` (an unanchored regex needs no leading `.*`)",
					snip(a.s, l2.node), l2.node.lo+1)
			}
			return fmt.Errorf("`%s` (at character %d) and `%s` (at character %d) can both match a text such as %q, and so can what lies between them, so nginx's regex engine (PCRE) tries every way to split such a text between them, n² steps for n characters (tens of milliseconds of a worker for an 8 KiB path): keep one of them, or make the characters they match differ (e.g. `[^/]*` for one path segment)",
				snip(a.s, l1.node), l1.node.lo+1, snip(a.s, l2.node), l2.node.lo+1, strings.Repeat(string(both.sample()), 4))
		}
	}
	return nil
}

// joined reports whether a path of atoms leads from l1's last atoms to
// l2's first, every atom on it (l2's first included) able to read a
// character of both.
func (a *automaton) joined(l1, l2 *loop, both runeSet) (bool, error) {
	seen := a.bits()
	var queue []int
	visit := func(from int) error {
		for q := range a.follow[from].all() {
			if err := a.spend(); err != nil {
				return err
			}
			if seen.has(q) || !a.sets[q].meets(both) {
				continue
			}
			seen.add(q)
			queue = append(queue, q)
		}
		return nil
	}
	for p := range l1.last.all() {
		if err := visit(p); err != nil {
			return false, err
		}
	}
	for len(queue) > 0 {
		q := queue[0]
		queue = queue[1:]
		if l2.first.has(q) {
			return true, nil
		}
		if err := visit(q); err != nil {
			return false, err
		}
	}
	return false, nil
}

// bitset is a set of atoms.
type bitset []uint64

func (b bitset) add(i int)      { b[i/64] |= 1 << (i % 64) }
func (b bitset) has(i int) bool { return b[i/64]&(1<<(i%64)) != 0 }
func (b bitset) clone() bitset  { return slices.Clone(b) }
func (b bitset) or(c bitset) {
	for i := range b {
		b[i] |= c[i]
	}
}

// all yields the members of b in order.
func (b bitset) all() iter.Seq[int] {
	return func(yield func(int) bool) {
		for i, w := range b {
			for w != 0 {
				j := bits.TrailingZeros64(w)
				if !yield(i*64 + j) {
					return
				}
				w &= w - 1
			}
		}
	}
}
