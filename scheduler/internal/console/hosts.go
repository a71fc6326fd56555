package console

import (
	"fmt"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/berthhq/berth/scheduler/internal/api"
)

// HostRow is one host on the hosts page, as GET /v1/hosts shows it.
type HostRow struct {
	Name    string
	Address string
	State   string
	Reason  string
	// Down: the leader does not use it (down, or a reason given).
	Down bool
	// CPU and Memory are its capacity ("no limit" when not set);
	// Reserved what its active instances reserve.
	CPU, Memory                 string
	ReservedCPU, ReservedMemory string
	Instances                   int
	Drain                       bool
	Labels                      string
	LastSeen                    string
}

type hostsPage struct {
	Base
	Hosts []HostRow
}

// hosts lists the registered hosts with their capacity, what their
// instances reserve, and buttons to drain or undrain each.
func (c *console) hosts(w http.ResponseWriter, r *http.Request) {
	page := hostsPage{Base: base(r, "hosts")}
	page.Live = "refresh"
	var hs []api.HostView
	if err := c.call(r, http.MethodGet, "/v1/hosts", nil, &hs); err != nil {
		code, text := c.apiMessage(err)
		page.Error = "cannot list the hosts: " + text
		c.render(w, code, "hosts.html", page)
		return
	}
	sort.Slice(hs, func(i, j int) bool { return hs[i].Name < hs[j].Name })
	for _, h := range hs {
		page.Hosts = append(page.Hosts, hostRow(h))
	}
	c.render(w, http.StatusOK, "hosts.html", page)
}

func hostRow(h api.HostView) HostRow {
	row := HostRow{Name: h.Name, Address: h.Address, State: h.State, Reason: h.StateReason, Instances: h.Instances, Drain: h.Drain,
		CPU: "no limit", Memory: "no limit", ReservedCPU: fmt.Sprintf("%.2f", h.ReservedCPU), ReservedMemory: h.ReservedMemory.String()}
	row.Down = h.State == "down" || h.StateReason != ""
	if h.CPU > 0 {
		row.CPU = fmt.Sprintf("%.2f", h.CPU)
	}
	if h.Memory > 0 {
		row.Memory = h.Memory.String()
	}
	labels := make([]string, 0, len(h.Labels))
	for k, v := range h.Labels {
		labels = append(labels, k+"="+v)
	}
	sort.Strings(labels)
	row.Labels = strings.Join(labels, ", ")
	if h.LastSeen != nil {
		row.LastSeen = h.LastSeen.UTC().Format(time.DateTime) + "Z"
	}
	return row
}
