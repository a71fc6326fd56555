package msg

import (
	"strings"
	"testing"

	"github.com/berthhq/berth/common/spec"
)

// FuzzDecode: Decode never panics, and every App or Instance it accepts
// carries only nginx-safe strings where nginx will see them.
func FuzzDecode(f *testing.F) {
	for _, m := range examples() {
		b, err := Encode(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	for _, s := range []string{
		`{"type":"berth.app.v1","name":"web","generation":1,"port":80,"lb":{"method":"hash","hash_key":"$uri}"},"routing":{"paths":["/"]},"updated_at":"2026-01-01T00:00:00Z"}`,
		`{"type":"berth.app.v1","routing":{"hosts":["a;b"]}}`,
		`{"type":"berth.instance.v1","app":"web","id":"a1","generation":1,"term":1,"address":"[fe80::1%eth0]:80","state":"running","weight":1,"updated_at":"2026-01-01T00:00:00Z"}`,
		`{"type":"berth.instance.v1","app":"web","id":"a1","generation":1,"term":1,"address":"[fe80::1%x;\n}\nserver {#]:80","state":"running","weight":1,"updated_at":"2026-01-01T00:00:00Z"}`,
		`{"type":"berth.instance.v1","app":"web","id":"a1","generation":1,"term":1,"address":"[::1]:80","state":"running","weight":1,"updated_at":"2026-01-01T00:00:00Z"}`,
		`{"type":"berth.instance.v1","app":"web","id":"a1","generation":1,"term":1,"address":"[127.0.0.1%]:80","state":"running","weight":1,"updated_at":"2026-01-01T00:00:00Z"}`,
		`{"type":null}`, `{"type":"berth.app.v1","health":{"interval":"-1s"}}`, `{}`, `null`, `"x"`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := Decode(data)
		if err != nil {
			return
		}
		if inst, ok := m.(*Instance); ok {
			if !spec.NginxSafe(inst.Address) || strings.ContainsAny(inst.Address, "% ") {
				t.Fatalf("accepted instance message puts %q into nginx via address", inst.Address)
			}
			return
		}
		a, ok := m.(*App)
		if !ok {
			return
		}
		check := func(field, s string) {
			if !spec.NginxSafe(s) {
				t.Fatalf("accepted app message puts %q into nginx via %s", s, field)
			}
		}
		check("name", a.Name)
		check("lb.hash_key", a.LB.HashKey)
		for _, h := range a.Routing.Hosts {
			check("routing.hosts", h)
		}
		for _, p := range a.Routing.Paths {
			check("routing.paths", p)
		}
		if a.Routing.TLS != nil {
			check("routing.tls.certificate", a.Routing.TLS.Certificate)
			check("routing.tls.key", a.Routing.TLS.Key)
		}
	})
}
