package publish

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/scheduler/internal/store"
)

// TestViewCarriesNoEnv: berth_apps, which every NATS reader reads, carries
// no env at all: not the plain values, not a secret, not its sealed form.
// The message type has no field that could hold one.
func TestViewCarriesNoEnv(t *testing.T) {
	t.Parallel()
	a := &spec.App{Name: "web", Image: "web:1", Port: 8080, Env: map[string]spec.EnvValue{
		"LOG_LEVEL":   spec.PlainValue("plain-918273645"),
		"DB_PASSWORD": spec.SecretValue("hunter2-918273645"),
		"API_KEY":     {Sealed: &spec.Sealed{Box: []byte("sealed-918273645"), ValueID: strings.Repeat("a", 32)}},
	}}
	b, err := json.Marshal(View(store.App{Name: "web", Spec: a, Generation: 1, UpdatedAt: time.Unix(1, 0)}, 3))
	require.NoError(t, err)
	require.NotContains(t, string(b), "918273645")
	require.NotContains(t, string(b), "LOG_LEVEL")
	require.NotContains(t, string(b), "value_id")

	var fields []string
	var walk func(reflect.Type)
	walk = func(t reflect.Type) {
		for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice || t.Kind() == reflect.Map {
			t = t.Elem()
		}
		if t.Kind() != reflect.Struct {
			return
		}
		for i := range t.NumField() {
			f := t.Field(i)
			fields = append(fields, t.Name()+"."+f.Name)
			if f.Type != reflect.TypeFor[spec.EnvValue]() {
				walk(f.Type)
			}
		}
	}
	walk(reflect.TypeFor[msg.App]())
	for _, f := range fields {
		require.NotContains(t, strings.ToLower(f), "env", "msg.App must not carry env: %s", f)
	}
}
