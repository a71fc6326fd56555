package bus

import "github.com/berthhq/berth/common/msg"

// Message is the DecodeFunc of a bucket of Berth contract messages of
// type T: strict decoding and validation by msg.DecodeAs, and a value
// whose key disagrees with the names it carries (msg.CheckKey: an app
// stored under another app's name, an instance under another instance's
// key) is refused, so the watcher drops and counts it.
func Message[T msg.Message](key string, data []byte) (T, error) {
	m, err := msg.DecodeAs[T](data)
	if err != nil {
		return m, err
	}
	if err := msg.CheckKey(key, m); err != nil {
		var zero T
		return zero, err
	}
	return m, nil
}
