package spec

import (
	"fmt"
	"strings"
)

// FieldError is one problem with one field, named by its path in the spec
// ("routing.hosts[1]", "health.timeout").
type FieldError struct {
	// Path is the dotted field path, with [i] for list items and [key] for map entries.
	Path string `json:"path"`
	// Message says what is wrong and what is allowed.
	Message string `json:"message"`
}

// Error returns "path: message".
func (e FieldError) Error() string {
	if e.Path == "" {
		return e.Message
	}
	return e.Path + ": " + e.Message
}

// Errors is every problem found in one spec. It is returned as an error only
// when it is not empty.
type Errors []FieldError

// Error lists every problem on its own line after a "spec:" prefix.
func (es Errors) Error() string {
	switch len(es) {
	case 0:
		return "spec: no errors"
	case 1:
		return "spec: " + es[0].Error()
	}
	var b strings.Builder
	fmt.Fprintf(&b, "spec: %d problems:", len(es))
	for _, e := range es {
		b.WriteString("\n  ")
		b.WriteString(e.Error())
	}
	return b.String()
}

// Add records a problem at path.
func (es *Errors) Add(path, format string, args ...any) {
	*es = append(*es, FieldError{Path: path, Message: fmt.Sprintf(format, args...)})
}

// Check records err at path when err is not nil.
func (es *Errors) Check(path string, err error) {
	if err != nil {
		*es = append(*es, FieldError{Path: path, Message: err.Error()})
	}
}

// Err returns es as an error, or nil when it holds no problem.
func (es Errors) Err() error {
	if len(es) == 0 {
		return nil
	}
	return es
}

// Join returns the path of a child field: Join("health", "timeout") is
// "health.timeout" and Join("", "name") is "name".
func Join(parent, child string) string {
	if parent == "" {
		return child
	}
	return parent + "." + child
}

// Index returns the path of a list item: Index("routing.hosts", 1) is "routing.hosts[1]".
func Index(parent string, i int) string { return fmt.Sprintf("%s[%d]", parent, i) }

// Key returns the path of a map entry: Key("env", "A") is "env[A]". A key
// with characters outside [A-Za-z0-9_.-] is quoted, so a hostile key cannot
// forge another path or break a log line.
func Key(parent, key string) string {
	for _, r := range key {
		if !(r == '_' || r == '.' || r == '-' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
			return fmt.Sprintf("%s[%q]", parent, key)
		}
	}
	return fmt.Sprintf("%s[%s]", parent, key)
}
