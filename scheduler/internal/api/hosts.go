package api

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/scheduler/internal/auth"
	"github.com/berthhq/berth/scheduler/internal/hosts"
	"github.com/berthhq/berth/scheduler/internal/store"
)

// HostStore keeps the host registry for /v1/hosts. Called concurrently.
type HostStore interface {
	Hosts(ctx context.Context) ([]store.Host, error)
	GetHost(ctx context.Context, name string) (store.Host, error)
	PutHost(ctx context.Context, h store.Host) (store.Host, error)
	SetHostDrain(ctx context.Context, name string, drain bool) (store.Host, error)
	DeleteHost(ctx context.Context, name string, force bool) error
}

var _ HostStore = (*store.Store)(nil)

// HostPolicy is a HostStore that also says what the operator lets a
// registration name (--host-tls-dir, --allow-loopback-hosts). A HostStore
// without it gets the zero hosts.Policy, the strictest: no TLS files, no
// loopback address.
type HostPolicy interface {
	HostPolicy() hosts.Policy
}

// HostRegistry is a HostStore under the operator's policy: what
// Deps.Hosts is given in a scheduler.
type HostRegistry struct {
	HostStore
	Policy hosts.Policy
}

// HostPolicy is r.Policy.
func (r HostRegistry) HostPolicy() hosts.Policy { return r.Policy }

var _ HostPolicy = HostRegistry{}

func (a *api) hostPolicy() hosts.Policy {
	if p, ok := a.d.Hosts.(HostPolicy); ok {
		return p.HostPolicy()
	}
	return hosts.Policy{}
}

// HostView is a host as the API shows it: its registration (without the
// paths of its TLS files: whether it has them), what the leader last saw
// of its engine, and what its instances reserve.
type HostView struct {
	Name      string `json:"name"`
	DockerURL string `json:"docker_url"`
	// TLS says whether the engine is reached with TLS client files.
	TLS        bool              `json:"tls"`
	Address    string            `json:"address"`
	Labels     map[string]string `json:"labels,omitempty"`
	CPU        float64           `json:"cpu,omitempty"`
	Memory     spec.ByteSize     `json:"memory,omitempty"`
	Registries []string          `json:"registries,omitempty"`
	Drain      bool              `json:"drain"`
	State      string            `json:"state"`
	// StateReason is why the leader does not use the host, when it does
	// not (its registration breaks the operator's policy, or its client
	// cannot be set up).
	StateReason string     `json:"state_reason,omitempty"`
	StateAt     *time.Time `json:"state_at,omitempty"`
	LastSeen    *time.Time `json:"last_seen,omitempty"`
	// ReservedCPU and ReservedMemory are what its active instances reserve.
	ReservedCPU    float64       `json:"reserved_cpu"`
	ReservedMemory spec.ByteSize `json:"reserved_memory"`
	Instances      int           `json:"instances"`
}

func (a *api) registerHosts(rt *router) {
	rt.handle("GET /v1/hosts", auth.Read, a.listHosts)
	rt.handle("GET /v1/hosts/{name}", auth.Read, a.getHost)
	rt.handle("PUT /v1/hosts/{name}", auth.Admin, a.putHost)
	rt.handle("DELETE /v1/hosts/{name}", auth.Admin, a.deleteHost)
	rt.handle("POST /v1/hosts/{name}/drain", auth.Admin, a.drainHost(true))
	rt.handle("POST /v1/hosts/{name}/undrain", auth.Admin, a.drainHost(false))
}

func (a *api) listHosts(w http.ResponseWriter, r *http.Request) {
	hs, err := a.d.Hosts.Hosts(r.Context())
	if err != nil {
		a.fail(w, err)
		return
	}
	views, err := a.hostViews(r.Context(), hs)
	if err != nil {
		a.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, views)
}

func (a *api) getHost(w http.ResponseWriter, r *http.Request) {
	h, err := a.d.Hosts.GetHost(r.Context(), r.PathValue("name"))
	if err != nil {
		a.fail(w, err)
		return
	}
	a.writeHost(w, r, http.StatusOK, h)
}

func (a *api) writeHost(w http.ResponseWriter, r *http.Request, code int, h store.Host) {
	views, err := a.hostViews(r.Context(), []store.Host{h})
	if err != nil {
		a.fail(w, err)
		return
	}
	writeJSON(w, code, views[0])
}

func (a *api) putHost(w http.ResponseWriter, r *http.Request) {
	body, ok := readBody(w, r)
	if !ok {
		return
	}
	var s hosts.Spec
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		a.fail(w, spec.Errors{{Path: "", Message: fmt.Sprintf("not a host registration: %s (fields: name, docker_url, tls {ca, cert, key}, address, labels, cpu, memory, registries)", msg.Truncate(err.Error(), 200))}})
		return
	}
	if s.Name != r.PathValue("name") {
		a.fail(w, spec.Errors{{Path: "name", Message: fmt.Sprintf("%q must match the host in the URL (%q)", msg.Truncate(s.Name, 64), msg.Truncate(r.PathValue("name"), 64))}})
		return
	}
	// The files are resolved here as the leader will resolve them: a link
	// out of --host-tls-dir is refused now, and again whenever it is used.
	if _, err := s.Check(a.hostPolicy()); err != nil {
		a.fail(w, err)
		return
	}
	h, err := a.d.Hosts.PutHost(r.Context(), s.Record())
	if err != nil {
		a.fail(w, err)
		return
	}
	a.logger.Info("host registered", zap.String("host", h.Name), zap.String("docker_url", h.DockerURL), zap.String("address", h.Address),
		zap.Strings("registries", h.Registries))
	a.writeHost(w, r, http.StatusOK, h)
}

func (a *api) deleteHost(w http.ResponseWriter, r *http.Request) {
	force := r.URL.Query().Get("force") == "true"
	if err := a.d.Hosts.DeleteHost(r.Context(), r.PathValue("name"), force); err != nil {
		a.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"name": r.PathValue("name"), "removed": true})
}

func (a *api) drainHost(drain bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		h, err := a.d.Hosts.SetHostDrain(r.Context(), r.PathValue("name"), drain)
		if err != nil {
			a.fail(w, err)
			return
		}
		a.writeHost(w, r, http.StatusOK, h)
	}
}

// hostViews adds to each host what its active instances reserve, with
// the scheduler's default limits for apps that set none.
func (a *api) hostViews(ctx context.Context, hs []store.Host) ([]HostView, error) {
	apps, err := a.d.Apps.List(ctx)
	if err != nil {
		return nil, err
	}
	res := map[string]spec.Resources{}
	for _, app := range apps {
		if app.Spec != nil {
			res[app.Name] = app.Spec.Resources
		}
	}
	insts, err := a.d.Apps.Instances(ctx, "")
	if err != nil {
		return nil, err
	}
	type reserved struct {
		cpu float64
		mem int64
		n   int
	}
	by := map[string]*reserved{}
	for _, in := range insts {
		if in.Host == "" || in.State == msg.StateStopped || in.State == msg.StateFailed {
			continue
		}
		r := by[in.Host]
		if r == nil {
			r = &reserved{}
			by[in.Host] = r
		}
		rs := res[in.App]
		r.cpu += cmp.Or(rs.CPU, a.o.DefaultCPU)
		r.mem += cmp.Or(int64(rs.Memory), a.o.DefaultMemory)
		r.n++
	}
	out := make([]HostView, 0, len(hs))
	for _, h := range hs {
		v := HostView{Name: h.Name, DockerURL: h.DockerURL, TLS: h.TLSCA != "" || h.TLSCert != "" || h.TLSKey != "", Address: h.Address,
			Labels: h.Labels, CPU: h.CPU, Memory: spec.ByteSize(h.Memory), Registries: h.Registries, Drain: h.Drain, State: h.State, StateReason: h.StateReason}
		if !h.StateAt.IsZero() {
			v.StateAt = &h.StateAt
		}
		if !h.LastSeen.IsZero() {
			v.LastSeen = &h.LastSeen
		}
		if r := by[h.Name]; r != nil {
			v.ReservedCPU, v.ReservedMemory, v.Instances = r.cpu, spec.ByteSize(r.mem), r.n
		}
		out = append(out, v)
	}
	return out, nil
}
