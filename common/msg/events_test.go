package msg

import (
	"os"
	"regexp"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestEventKindsAreDocumented: every kind is a valid subject token and a
// row of docs/nats.md's table of event kinds, and the table names no kind
// the scheduler does not record.
func TestEventKindsAreDocumented(t *testing.T) {
	t.Parallel()
	doc, err := os.ReadFile("../../docs/nats.md")
	require.NoError(t, err)
	table := regexp.MustCompile(`(?s)Event kinds \(the last subject token.*?\n\n(\|.*?)\n\n`).FindSubmatch(doc)
	require.NotNil(t, table, "docs/nats.md has the table of event kinds")
	documented := map[string]bool{}
	for _, row := range regexp.MustCompile(`(?m)^\| (.*?) \|`).FindAllSubmatch(table[1], -1) {
		for _, kind := range regexp.MustCompile("`([a-z_]+)`").FindAllSubmatch(row[1], -1) {
			documented[string(kind[1])] = true
		}
	}
	seen := map[EventKind]bool{}
	for _, k := range EventKinds() {
		require.False(t, seen[k], "%s listed twice", k)
		seen[k] = true
		require.NoError(t, CheckToken(string(k)))
		require.True(t, documented[string(k)], "event kind %s is not in docs/nats.md's table", k)
		delete(documented, string(k))
	}
	require.Empty(t, documented, "docs/nats.md documents kinds the scheduler does not record")
}
