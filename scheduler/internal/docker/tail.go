package docker

import (
	"bytes"
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/client"
)

// maxTailBytes bounds what Tail reads: a container that wrote one huge
// line cannot make a failure's event huge.
const maxTailBytes = 64 << 10

// Tail returns the last n lines a container wrote, stdout and stderr
// interleaved as Docker stored them, each cut to 512 bytes. A stopped
// container's logs are still there until it is removed.
func (c *Client) Tail(ctx context.Context, id string, n int) ([]string, error) {
	rc, err := c.c.ContainerLogs(ctx, id, client.ContainerLogsOptions{ShowStdout: true, ShowStderr: true, Tail: strconv.Itoa(n)})
	if err != nil {
		return nil, fmt.Errorf("docker logs %s: %w", ShortID(id), notFound(err))
	}
	defer rc.Close()
	var out limitedBuffer
	out.max = maxTailBytes
	if _, err := stdcopy.StdCopy(&out, &out, rc); err != nil && !out.full {
		return nil, fmt.Errorf("docker logs %s: %w", ShortID(id), err)
	}
	text := strings.TrimRight(out.String(), "\n")
	if text == "" {
		return nil, nil
	}
	lines := strings.Split(text, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	for i, l := range lines {
		l = strings.TrimRight(l, "\r")
		if len(l) > 512 {
			l = l[:512] + "…"
		}
		lines[i] = strings.ToValidUTF8(l, "\uFFFD")
	}
	return lines, nil
}

// limitedBuffer keeps the first max bytes written and refuses the rest.
type limitedBuffer struct {
	bytes.Buffer
	max  int
	full bool
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	if room := b.max - b.Len(); len(p) > room {
		b.Buffer.Write(p[:max(room, 0)])
		b.full = true
		return 0, errTailFull
	}
	return b.Buffer.Write(p)
}

var errTailFull = fmt.Errorf("log tail over %d bytes", maxTailBytes)
