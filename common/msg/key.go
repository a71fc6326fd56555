package msg

import (
	"errors"
	"fmt"
)

// ErrKeyMismatch: a KV value whose key disagrees with the names it
// carries. A reader that trusted either could be led to route, probe or
// count one app's traffic as another's.
var ErrKeyMismatch = errors.New("msg: key does not match the message")

// Key returns the KV key a message of a bucket is stored under: the app
// name (apps, certificates), <app>.<instance> (instances, health), the
// node (agents), the checker id (checkers) or the token (challenges). ok is false for a message that is not stored
// in a bucket.
func Key(m Message) (key string, ok bool) {
	switch m := m.(type) {
	case *App:
		return m.Name, true
	case *Instance:
		return InstanceKey(m.App, m.ID), true
	case *Health:
		return InstanceKey(m.App, m.Instance), true
	case *Agent:
		return m.Node, true
	case *Checker:
		return m.ID, true
	case *Certificate:
		return m.App, true
	case *Challenge:
		return m.Token, true
	case *Node:
		return m.Node, true
	}
	return "", false
}

// CheckKey returns an error wrapping ErrKeyMismatch when m is a bucket's
// message and key is not the one Key gives it.
func CheckKey(key string, m Message) error {
	want, ok := Key(m)
	if !ok || key == want {
		return nil
	}
	return fmt.Errorf("%w: %s under key %q names %q", ErrKeyMismatch, m.MessageType(), Truncate(key, 256), want)
}
