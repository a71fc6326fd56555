package main

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"net/url"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/berthhq/berth/scheduler/internal/api"
)

// instanceStatus is status APP --instance ID: the instance's record, its
// last health check results (newest first) and its failures by kind.
func instanceStatus(ctx context.Context, cl *client, s *statusCmd, out io.Writer) error {
	var d api.InstanceDetail
	if err := cl.do(ctx, "GET", "/v1/apps/"+url.PathEscape(s.App)+"/instances/"+url.PathEscape(s.Instance), nil, &d); err != nil {
		return err
	}
	return show(out, s.Output, d, func(w io.Writer) { printInstance(w, s.App, d) })
}

func printInstance(w io.Writer, app string, d api.InstanceDetail) {
	fmt.Fprintf(w, "%s %s: %s, health %s, generation %d, host %s, address %s, %d restarts, created %s ago\n", app, d.ID, d.State, d.Health,
		d.Generation, cmp.Or(d.Host, "-"), cmp.Or(d.Address, "-"), d.Restarts, age(d.CreatedAt))
	c := d.Check
	if c == nil {
		fmt.Fprintf(w, "check: %s\n", d.CheckNote)
		return
	}
	fmt.Fprintf(w, "check: %s by %s, checked %s ago (%d passed, %d failed in a row)", c.Status, c.Checker, age(c.CheckedAt),
		c.ConsecutiveSuccesses, c.ConsecutiveFailures)
	if c.Failure != "" {
		fmt.Fprintf(w, ", last failure %s: %s", c.Failure, c.Message)
	}
	fmt.Fprintln(w)
	if d.CheckNote != "" {
		fmt.Fprintf(w, "note: %s\n", d.CheckNote)
	}
	if c.Probes == 0 && len(c.History) == 0 {
		fmt.Fprintln(w, "no check history: the checker that published this health keeps none (an older healthd)")
		return
	}
	fmt.Fprintf(w, "failures by kind since %s (%d probes, the checker's since it took the instance): %s\n",
		c.HistorySince.Local().Format(time.DateTime), c.Probes, failureCounts(c.FailureCounts))
	fmt.Fprintf(w, "last %d results, newest first:\n", len(c.History))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  AT\tLATENCY\tRESULT\tMESSAGE")
	for _, r := range c.History {
		fmt.Fprintf(tw, "  %s\t%.1fms\t%s\t%s\n", r.At.Local().Format("15:04:05.000"), r.LatencyMS, cmp.Or(r.Failure, "ok"), r.Message)
	}
	tw.Flush()
}

// failureCounts is "slow 1, timeout 4", by kind; "none" when empty.
func failureCounts(m map[string]int64) string {
	if len(m) == 0 {
		return "none"
	}
	kinds := make([]string, 0, len(m))
	for k := range m {
		kinds = append(kinds, k)
	}
	slices.Sort(kinds)
	parts := make([]string, len(kinds))
	for i, k := range kinds {
		parts[i] = fmt.Sprintf("%s %d", k, m[k])
	}
	return strings.Join(parts, ", ")
}
