package accesslog

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestReadQueueLimit(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := filepath.Join(dir, "qlen")
	require.NoError(t, os.WriteFile(p, []byte("512\n"), 0o644))
	n, err := readQueueLimit(p)
	require.NoError(t, err)
	require.Equal(t, 512, n)
	require.NoError(t, os.WriteFile(p, []byte("lots\n"), 0o644))
	_, err = readQueueLimit(p)
	require.EqualError(t, err, `net.unix.max_dgram_qlen: "lots" is not a number`)
	_, err = readQueueLimit(filepath.Join(dir, "none"))
	require.ErrorContains(t, err, "net.unix.max_dgram_qlen: open ")
	// This machine's, as lbagent reads it.
	n, err = QueueLimit()
	require.NoError(t, err)
	require.Positive(t, n)
}
