package bus

import "github.com/berthhq/berth/common/msg"

// Message is the DecodeFunc of a bucket of Berth contract messages of
// type T: strict decoding and validation by msg.DecodeAs.
func Message[T msg.Message](_ string, data []byte) (T, error) { return msg.DecodeAs[T](data) }
