package main

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/scheduler/internal/api"
)

type edgeCmd struct {
	clientFlags `embed:""`
}

type certsCmd struct {
	clientFlags `embed:""`
}

// edge shows every lbagent: a table, then each one's errors below it.
func edge(ctx context.Context, e *edgeCmd, out io.Writer) error {
	cl, err := newClient(e.clientFlags)
	if err != nil {
		return err
	}
	var v api.EdgeView
	if err := cl.do(ctx, "GET", "/v1/edge", nil, &v); err != nil {
		return err
	}
	return show(out, e.Output, v, func(w io.Writer) { printEdge(w, v, time.Now()) })
}

func printEdge(w io.Writer, v api.EdgeView, now time.Time) {
	if v.RevisionError != "" {
		fmt.Fprintf(w, "instances bucket: %s\n", oneLine(v.RevisionError))
	} else {
		fmt.Fprintf(w, "instances bucket at revision %d\n", v.InstancesRevision)
	}
	if len(v.Agents) == 0 {
		fmt.Fprintln(w, "no lbagent has reported: none runs, or none reaches NATS")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tMODE\tAPPLIED\tLAG\tLAST RELOAD\tLAST PUSH\tNGINX\tAPPS\tAPP ERRORS\tREPORTED")
	for _, a := range v.Agents {
		reported := since(a.UpdatedAt, now)
		if a.Stale {
			reported += " (stale)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\t%d\t%d\t%s\n", oneLine(a.Node), oneLine(a.Mode), a.AppliedRevision, lag(a.Lag),
			changeCell(a.LastReload, now), changeCell(a.LastPush, now), oneLine(cmp.Or(a.NginxVersion, "-")), a.Apps, len(a.Errors), reported)
	}
	tw.Flush()
	for _, a := range v.Agents {
		if a.LastError != "" {
			fmt.Fprintf(w, "%s: failing: %s\n", oneLine(a.Node), oneLine(a.LastError))
		}
		if c := a.LastReload; c != nil && c.Error != "" {
			fmt.Fprintf(w, "%s: last reload failed %s: %s\n", oneLine(a.Node), since(c.At, now), oneLine(c.Error))
		}
		if c := a.LastPush; c != nil && c.Error != "" {
			fmt.Fprintf(w, "%s: last push failed %s: %s\n", oneLine(a.Node), since(c.At, now), oneLine(c.Error))
		}
		for _, app := range slices.Sorted(maps.Keys(a.Errors)) {
			fmt.Fprintf(w, "%s: app %s keeps its last good config: %s\n", oneLine(a.Node), oneLine(app), oneLine(a.Errors[app]))
		}
	}
}

// lag is an lbagent's lag for the table: how many revisions behind, or ?
// when unknown.
func lag(n *uint64) string {
	switch {
	case n == nil:
		return "?"
	case *n == 0:
		return "0 (caught up)"
	}
	return strconv.FormatUint(*n, 10) + " behind"
}

// changeCell is a reload or push for the table: when, how long, and
// whether it worked.
func changeCell(c *msg.ConfigChange, now time.Time) string {
	if c == nil {
		return "-"
	}
	result := "ok"
	if c.Error != "" {
		result = "FAILED"
	}
	return fmt.Sprintf("%s, %s, %s", since(c.At, now), millis(c.DurationMS), result)
}

func millis(ms float64) string {
	if ms < 10 {
		return strconv.FormatFloat(ms, 'f', 1, 64) + "ms"
	}
	return strconv.FormatFloat(ms, 'f', 0, 64) + "ms"
}

// since is how long before now t was, to the second.
func since(t, now time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return now.Sub(t).Round(time.Second).String() + " ago"
}

// certificates shows every app's certificate: a table, then the failures below it.
func certificates(ctx context.Context, e *certsCmd, out io.Writer) error {
	cl, err := newClient(e.clientFlags)
	if err != nil {
		return err
	}
	var vs []api.CertificateView
	if err := cl.do(ctx, "GET", "/v1/certificates", nil, &vs); err != nil {
		return err
	}
	return show(out, e.Output, vs, func(w io.Writer) { printCerts(w, vs, time.Now()) })
}

func printCerts(w io.Writer, vs []api.CertificateView, now time.Time) {
	if len(vs) == 0 {
		fmt.Fprintln(w, "no certificate: no app has routing.tls.acme")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "APP\tSTATUS\tNAMES\tISSUER\tEXPIRES\tDAYS LEFT\tISSUED\tFAILURES")
	for _, c := range vs {
		issuer := c.IssuerCN
		if c.IssuerOrg != "" {
			issuer = strings.TrimSpace(issuer + " (" + c.IssuerOrg + ")")
		}
		expires, days := "-", "-"
		if !c.NotAfter.IsZero() {
			expires = c.NotAfter.UTC().Format("2006-01-02 15:04")
		}
		if c.DaysLeft != nil {
			days = strconv.Itoa(*c.DaysLeft)
		}
		issued := "-"
		if !c.IssuedAt.IsZero() {
			issued = c.IssuedAt.UTC().Format("2006-01-02 15:04")
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\n", oneLine(c.App), oneLine(c.Status), names(c.Names), oneLine(cmp.Or(issuer, "-")), expires, days,
			issued, c.Failures)
	}
	tw.Flush()
	for _, c := range vs {
		if c.LastError == "" {
			continue
		}
		retry := ""
		if !c.RetryAt.IsZero() {
			retry = fmt.Sprintf(" (next try in %s)", max(c.RetryAt.Sub(now), 0).Round(time.Second))
		}
		fmt.Fprintf(w, "%s: last order failed%s: %s\n", oneLine(c.App), retry, oneLine(c.LastError))
	}
}

// names lists a certificate's names for the table: the first three, and
// how many more.
func names(ns []string) string {
	if len(ns) == 0 {
		return "-"
	}
	shown := ns[:min(len(ns), 3)]
	s := oneLine(strings.Join(shown, ","))
	if more := len(ns) - len(shown); more > 0 {
		s += fmt.Sprintf(" +%d more", more)
	}
	return s
}

// oneLine is s as one line of printable text for a table: what an API
// answer carries (an lbagent's error, a CA's name) must not move the
// columns or drive the terminal.
func oneLine(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r == '\t' || r == '\n' || r == '\r':
			return ' '
		case !unicode.IsPrint(r):
			return -1
		}
		return r
	}, s)
}
