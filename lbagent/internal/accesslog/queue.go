package accesslog

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// WantQueue is the datagram queue an access log socket should have: at the
// kernel's default of 10, a reader that pauses 2 ms at 5,000 requests/s
// loses lines (nginx drops what it cannot send), and the traffic windows
// and per-app series count less than was served.
const WantQueue = 512

// queuePath is the sysctl that sets it, read when a socket is created.
const queuePath = "/proc/sys/net/unix/max_dgram_qlen"

// QueueLimit returns net.unix.max_dgram_qlen of this network namespace:
// how many lines the socket can hold before nginx drops them.
func QueueLimit() (int, error) { return readQueueLimit(queuePath) }

func readQueueLimit(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("net.unix.max_dgram_qlen: %w", err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("net.unix.max_dgram_qlen: %q is not a number", strings.TrimSpace(string(b)))
	}
	return n, nil
}
