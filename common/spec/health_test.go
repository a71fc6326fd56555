package spec

import (
	"errors"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// natsForgery is the confirmed attack: raw NATS protocol that writes an
// instance record with term 2^62 into berth_instances.
const natsForgery = "CONNECT {\"verbose\":false}\r\n" +
	"PUB $KV.berth_instances.web.a 136\r\n" +
	`{"app":"web","id":"a","generation":1,"term":4611686018427387904,"address":"169.254.169.254:80","state":"running","weight":1}` + "\r\n"

func TestHealthReachesOnlyTheInstance(t *testing.T) {
	t.Parallel()
	const base = "name: web\nimage: web:1\nport: 8080\n"
	tests := []struct {
		name   string
		health string
		fields []string // the refused fields; none means valid
	}{
		{"confirmed exploit: NATS protocol to 4222", "{type: tcp, port: 4222, send: " + strconv.Quote(natsForgery) + "}", []string{"health.port"}},
		{"NATS monitoring port over http", "{port: 8222, path: /varz}", []string{"health.port"}},
		{"Postgres port", "{type: tcp, port: 5432}", []string{"health.port"}},
		{"scheduler API port", "{port: 7070, path: /v1/apps}", []string{"health.port"}},
		{"send over 1 KiB", `{type: tcp, send: "` + strings.Repeat("x", MaxTCPSend+1) + `"}`, []string{"health.send"}},
		{"expect over 1 KiB", `{type: tcp, expect: "` + strings.Repeat("x", MaxTCPExpect+1) + `"}`, []string{"health.expect"}},
		{"send and expect at 1 KiB", `{type: tcp, send: "` + strings.Repeat("x", MaxTCPSend) + `", expect: "` + strings.Repeat("y", MaxTCPExpect) + `"}`, nil},
		{"a separate app port", "{type: tcp, port: 9000, send: \"PING\\r\\n\", expect: PONG}", nil},
		{"an app whose own port is 4222", "{type: tcp, port: 4222}", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			src := base + "health: " + tt.health + "\n"
			if tt.name == "an app whose own port is 4222" {
				src = strings.Replace(src, "port: 8080", "port: 4222", 1)
			}
			_, err := Load([]byte(src))
			if tt.fields == nil {
				require.NoError(t, err)
				return
			}
			var es Errors
			require.True(t, errors.As(err, &es), "a field error, got %v", err)
			var got []string
			for _, e := range es {
				got = append(got, e.Path)
			}
			require.Equal(t, tt.fields, got, "%v", err)
		})
	}
}
