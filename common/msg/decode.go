package msg

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
)

// MaxMessageSize is the largest message Decode accepts.
const MaxMessageSize = 256 << 10

// Errors of Decode; the returned error wraps one of them.
var (
	ErrTooLarge    = errors.New("msg: message too large")
	ErrMalformed   = errors.New("msg: malformed message")
	ErrUnknownType = errors.New("msg: unknown message type")
	ErrWrongType   = errors.New("msg: unexpected message type")
	ErrInvalid     = errors.New("msg: invalid message")
)

var constructors = map[string]func() Message{
	TypeApp:          func() Message { return &App{} },
	TypeInstance:     func() Message { return &Instance{} },
	TypeHealth:       func() Message { return &Health{} },
	TypeHealthChange: func() Message { return &HealthChange{} },
	TypeAgent:        func() Message { return &Agent{} },
	TypeChecker:      func() Message { return &Checker{} },
	TypeEvent:        func() Message { return &Event{} },
	TypeMetrics:      func() Message { return &Metrics{} },
	TypeReload:       func() Message { return &Reload{} },
	TypeUsage:        func() Message { return &Usage{} },
	TypeCertificate:  func() Message { return &Certificate{} },
	TypeChallenge:    func() Message { return &Challenge{} },
	TypeNode:         func() Message { return &Node{} },
}

// Types lists every message type of v1.
func Types() []string { return slices.Sorted(maps.Keys(constructors)) }

// Decode reads one message: it caps the size, reads "type", refuses a
// missing or unknown type, decodes the message and validates it. Unknown
// fields are ignored: within v1 producers may add optional fields.
func Decode(data []byte) (Message, error) {
	if len(data) > MaxMessageSize {
		return nil, fmt.Errorf("%w: %d bytes, the limit is %d", ErrTooLarge, len(data), MaxMessageSize)
	}
	var h Header
	if err := json.Unmarshal(data, &h); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if h.Type == "" {
		return nil, fmt.Errorf("%w: no \"type\" field", ErrMalformed)
	}
	newMsg, ok := constructors[h.Type]
	if !ok {
		t := h.Type
		if len(t) > 64 {
			t = Truncate(t, 64) + "…"
		}
		return nil, fmt.Errorf("%w: %q", ErrUnknownType, t)
	}
	m := newMsg()
	if err := json.Unmarshal(data, m); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrMalformed, h.Type, err)
	}
	if err := m.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrInvalid, h.Type, err)
	}
	return m, nil
}

// DecodeAs decodes a message that must be of type T (a pointer such as
// *Instance), as a KV watcher of one bucket expects.
func DecodeAs[T Message](data []byte) (T, error) {
	var zero T
	m, err := Decode(data)
	if err != nil {
		return zero, err
	}
	t, ok := m.(T)
	if !ok {
		return zero, fmt.Errorf("%w: got %s, want %s", ErrWrongType, m.MessageType(), zero.MessageType())
	}
	return t, nil
}

// Encode stamps the message's type, validates it and marshals it, so a
// producer can never publish an invalid message.
func Encode(m Message) ([]byte, error) {
	m.header().Type = m.MessageType()
	if err := m.Validate(); err != nil {
		return nil, fmt.Errorf("encode %s: %w", m.MessageType(), err)
	}
	b, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", m.MessageType(), err)
	}
	if len(b) > MaxMessageSize {
		return nil, fmt.Errorf("encode %s: %w: %d bytes", m.MessageType(), ErrTooLarge, len(b))
	}
	return b, nil
}

// Truncate cuts s to at most n bytes, on a rune boundary, so that the
// result is valid UTF-8: for free text headed for a message, a log or an
// error.
func Truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "")
}

func sortedKeys[V any](m map[string]V) []string { return slices.Sorted(maps.Keys(m)) }
