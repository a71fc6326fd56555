package deploy

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

var update = flag.Bool("update", false, "rewrite the metric reference in docs/operations.md")

// The metric reference in docs/operations.md lies between these lines.
const (
	refStart = "<!-- metric reference: generated from the code by `go test ./deploy -run TestMetricReference -update` -->"
	refEnd   = "<!-- end of the metric reference -->"
)

// TestMetricReference: docs/operations.md lists every metric the daemons
// export, with its type, labels and help, as the code registers them. A
// metric added, renamed or relabelled without the reference fails here;
// -update writes the table again.
func TestMetricReference(t *testing.T) {
	t.Parallel()
	reg := registered(t, "..")
	for name, m := range described {
		reg[name] = m
	}
	help := helps(t, "..")
	names := make([]string, 0, len(reg))
	for name := range reg {
		names = append(names, name)
	}
	sort.Strings(names)
	var b strings.Builder
	b.WriteString(refStart + "\n\n")
	b.WriteString("| metric | daemon | type | labels | what |\n| --- | --- | --- | --- | --- |\n")
	for _, name := range names {
		m := reg[name]
		labels := "–"
		if len(m.labels) > 0 {
			labels = "`" + strings.Join(m.labels, "`, `") + "`"
		}
		what := strings.ReplaceAll(strings.TrimSpace(help[name]), "|", "\\|")
		require.NotEmpty(t, what, "%s has no Help the reference can show", name)
		fmt.Fprintf(&b, "| `%s` | %s | %s | %s | %s |\n", name, daemonOf(name), m.kind, labels, what)
	}
	b.WriteString("\n" + refEnd)
	want := b.String()

	path := filepath.Join("..", "docs", "operations.md")
	raw, err := os.ReadFile(path)
	require.NoError(t, err)
	doc := string(raw)
	i, j := strings.Index(doc, refStart), strings.Index(doc, refEnd)
	require.True(t, i >= 0 && j > i, "docs/operations.md has no metric reference between %q and %q", refStart, refEnd)
	got := doc[i : j+len(refEnd)]
	if *update {
		require.NoError(t, os.WriteFile(path, []byte(doc[:i]+want+doc[j+len(refEnd):]), 0o644))
		return
	}
	require.Equal(t, want, got, "the metric reference is stale: go test ./deploy -run TestMetricReference -update")
}

// daemonOf names the daemon a metric's prefix says.
func daemonOf(name string) string {
	for _, d := range []string{"scheduler", "healthd", "lbagent"} {
		if strings.HasPrefix(name, "berth_"+d+"_") {
			return d
		}
	}
	return "every daemon"
}
