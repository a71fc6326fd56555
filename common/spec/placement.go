package spec

import (
	"fmt"
	"regexp"
	"strings"
)

// Placement says which Docker hosts may run an app's instances and how
// to spread them (docs/spec.md, placement).
type Placement struct {
	// Constraints are host label conditions, "key==value" or
	// "key!=value", all of which a host must meet.
	Constraints []string `json:"constraints,omitempty"`
	// SpreadBy spreads the replicas over the values of this host label
	// before spreading them over hosts.
	SpreadBy string `json:"spread_by,omitempty"`
	// OnHostLost says what becomes of the instances of a host marked down
	// (docs/spec.md, placement.on_host_lost).
	OnHostLost *OnHostLost `json:"on_host_lost,omitempty"`
}

// OnHostLost says what becomes of an app's instances when their host is
// marked down (its engine has not answered for --host-timeout).
type OnHostLost struct {
	// Replace starts a replacement on another host for each of them (the
	// default, as Nomad replaces an allocation on a lost node). false
	// keeps the partition-safe bound instead: an instance lost with its
	// host may still run there, so it counts toward replicas + max_surge
	// until the host answers again or leaves the registry.
	Replace *bool `json:"replace,omitempty"`
}

// ReplaceLost reports whether the instances of a host marked down are
// replaced at once: placement.on_host_lost.replace, true unless set false.
func (p *Placement) ReplaceLost() bool {
	return p == nil || p.OnHostLost == nil || p.OnHostLost.Replace == nil || *p.OnHostLost.Replace
}

// MaxConstraints caps an app's placement constraints.
const MaxConstraints = 20

// Constraint is one parsed placement constraint: Key==Value, or
// Key!=Value when Not. A host without the label fails ==, and passes !=.
type Constraint struct {
	Key, Value string
	Not        bool
}

// String is the constraint as a spec writes it.
func (c Constraint) String() string {
	if c.Not {
		return c.Key + "!=" + c.Value
	}
	return c.Key + "==" + c.Value
}

// Holds reports whether a host with labels meets c.
func (c Constraint) Holds(labels map[string]string) bool {
	v, ok := labels[c.Key]
	if c.Not {
		return !ok || v != c.Value
	}
	return ok && v == c.Value
}

var (
	labelKeyRe   = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$`)
	labelValueRe = regexp.MustCompile(`^[A-Za-z0-9_.-]{0,63}$`)
)

// CheckLabelKey checks a host label key: 1–63 letters, digits, '_', '.'
// and '-', starting and ending with a letter or digit.
func CheckLabelKey(k string) error {
	if !labelKeyRe.MatchString(k) {
		return fmt.Errorf("%q is not a label key (1-63 letters, digits, '_', '.' or '-', starting and ending with a letter or digit)", k)
	}
	return nil
}

// CheckLabelValue checks a host label value: 0–63 letters, digits, '_',
// '.' and '-'.
func CheckLabelValue(v string) error {
	if !labelValueRe.MatchString(v) {
		return fmt.Errorf("%q is not a label value (0-63 letters, digits, '_', '.' or '-')", v)
	}
	return nil
}

// ParseConstraint reads "key==value" or "key!=value".
func ParseConstraint(s string) (Constraint, error) {
	var c Constraint
	k, v, ok := strings.Cut(s, "!=")
	if ok {
		c.Not = true
	} else if k, v, ok = strings.Cut(s, "=="); !ok {
		return c, fmt.Errorf("%q: want key==value or key!=value", s)
	}
	if err := CheckLabelKey(k); err != nil {
		return c, fmt.Errorf("%q: %w", s, err)
	}
	if err := CheckLabelValue(v); err != nil {
		return c, fmt.Errorf("%q: %w", s, err)
	}
	c.Key, c.Value = k, v
	return c, nil
}

// Parsed returns the constraints parsed; Validate has checked them.
func (p *Placement) Parsed() []Constraint {
	if p == nil {
		return nil
	}
	out := make([]Constraint, 0, len(p.Constraints))
	for _, s := range p.Constraints {
		if c, err := ParseConstraint(s); err == nil {
			out = append(out, c)
		}
	}
	return out
}

// Validate checks the constraints, the spread key and on_host_lost.
func (p *Placement) Validate(path string) Errors {
	var es Errors
	if p == nil {
		return nil
	}
	if len(p.Constraints) > MaxConstraints {
		es.Add(Join(path, "constraints"), "has %d constraints; at most %d", len(p.Constraints), MaxConstraints)
	}
	seen := map[string]int{}
	for i, s := range p.Constraints {
		fp := Index(Join(path, "constraints"), i)
		if _, err := ParseConstraint(s); err != nil {
			es.Check(fp, err)
			continue
		}
		if j, dup := seen[s]; dup {
			es.Add(fp, "%q repeats %s", s, Index(Join(path, "constraints"), j))
		}
		seen[s] = i
	}
	if p.SpreadBy != "" {
		es.Check(Join(path, "spread_by"), CheckLabelKey(p.SpreadBy))
	}
	if p.OnHostLost != nil && p.OnHostLost.Replace == nil {
		es.Add(Join(Join(path, "on_host_lost"), "replace"),
			"must be set, true (the default: a lost host's instances are replaced on the other hosts) or false (they count toward replicas + max_surge until their host answers), or leave on_host_lost out")
	}
	return es
}
