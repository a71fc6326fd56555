package docker

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"
)

// Reading is one one-shot stats reading of a container: cumulative CPU
// time, and memory in use (page cache excluded, as `docker stats` shows).
type Reading struct {
	ContainerID string
	At          time.Time
	// CPUNanos is the container's cumulative CPU time.
	CPUNanos uint64
	// MemoryBytes is the memory in use; MemoryLimit the cgroup limit.
	MemoryBytes, MemoryLimit uint64
}

// Stats takes one reading of each container, at most parallel at a time
// (a one-shot read costs the engine a cgroup walk, and a slow engine must
// not hold every reading behind one). Containers that fail are left out
// and their errors returned together.
func (c *Client) Stats(ctx context.Context, ids []string, parallel int) (map[string]Reading, error) {
	out := make(map[string]Reading, len(ids))
	var mu sync.Mutex
	var errs []error
	sem := make(chan struct{}, max(parallel, 1))
	var wg sync.WaitGroup
	for _, id := range ids {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			r, err := c.stat(ctx, id)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				return
			}
			out[id] = r
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		return out, fmt.Errorf("docker stats: %d of %d containers failed, first: %w", len(errs), len(ids), errs[0])
	}
	return out, nil
}

func (c *Client) stat(ctx context.Context, id string) (Reading, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	res, err := c.c.ContainerStats(ctx, id, client.ContainerStatsOptions{Stream: false})
	if err != nil {
		return Reading{}, fmt.Errorf("stats of %s: %w", ShortID(id), err)
	}
	defer res.Body.Close()
	var s container.StatsResponse
	if err := json.NewDecoder(io.LimitReader(res.Body, 1<<20)).Decode(&s); err != nil {
		return Reading{}, fmt.Errorf("stats of %s: %w", ShortID(id), err)
	}
	mem := s.MemoryStats.Usage
	// cgroup v2 reports inactive_file, v1 total_inactive_file: page cache
	// the kernel reclaims before an OOM kill does not count.
	for _, k := range []string{"inactive_file", "total_inactive_file"} {
		if v, ok := s.MemoryStats.Stats[k]; ok && v < mem {
			mem -= v
			break
		}
	}
	at := s.Read
	if at.IsZero() {
		at = time.Now()
	}
	return Reading{ContainerID: id, At: at, CPUNanos: s.CPUStats.CPUUsage.TotalUsage, MemoryBytes: mem, MemoryLimit: s.MemoryStats.Limit}, nil
}

// Usage turns two readings of a container into its CPU use in percent of
// its CPU limit (cores; 0 means no limit: percent of one core) and its
// memory in percent of its limit. ok is false when prev is not an earlier
// reading of the same container (no rate can be computed yet).
func Usage(prev, cur Reading, cpuLimit float64) (cpuPercent, memPercent float64, ok bool) {
	if prev.ContainerID != cur.ContainerID || !cur.At.After(prev.At) || cur.CPUNanos < prev.CPUNanos {
		return 0, 0, false
	}
	cores := float64(cur.CPUNanos-prev.CPUNanos) / float64(cur.At.Sub(prev.At).Nanoseconds())
	if cpuLimit <= 0 {
		cpuLimit = 1
	}
	cpuPercent = cores / cpuLimit * 100
	if cur.MemoryLimit > 0 {
		memPercent = float64(cur.MemoryBytes) / float64(cur.MemoryLimit) * 100
	}
	return cpuPercent, memPercent, true
}
