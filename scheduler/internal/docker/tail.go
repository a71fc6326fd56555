package docker

import (
	"context"
	"sort"
	"strings"
	"unicode"
)

// maxTailLine is how much of each line Tail keeps: a failure's event
// stays small whatever the container wrote.
const maxTailLine = 512

// printable replaces control characters but tab with U+FFFD: a tail is
// shown among Berth's own text (status, events), where an app's escape
// sequences could rewrite an operator's terminal.
func printable(r rune) rune {
	if r != '\t' && unicode.IsControl(r) {
		return '\uFFFD'
	}
	return r
}

// Tail returns the last n lines a container wrote, stdout and stderr
// together in the order Docker received them, each cut to 512 bytes. A
// stopped container's logs are there until it is removed.
func (c *Client) Tail(ctx context.Context, id string, n int) ([]string, error) {
	var lines []LogLine
	if err := c.Logs(ctx, id, LogOptions{Tail: n}, func(l LogLine) error {
		lines = append(lines, l)
		return nil
	}); err != nil {
		return nil, err
	}
	sort.SliceStable(lines, func(i, j int) bool { return lines[i].Time.Before(lines[j].Time) })
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	out := make([]string, 0, len(lines))
	for _, l := range lines {
		t := strings.TrimRight(l.Text, "\r")
		if len(t) > maxTailLine {
			t = strings.ToValidUTF8(t[:maxTailLine], "") + "…"
		}
		out = append(out, strings.Map(printable, strings.ToValidUTF8(t, "\uFFFD")))
	}
	if len(out) == 0 {
		return nil, nil
	}
	return out, nil
}
