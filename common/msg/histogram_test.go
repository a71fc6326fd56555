package msg

import (
	"encoding/json"
	"math"
	"math/rand/v2"
	"sort"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Quantiles from a histogram are within its relative accuracy of the exact
// ones, and histograms of two nodes merged give the quantile of all values,
// which no combination of the nodes' own quantiles gives.
func TestHistogramQuantilesAndMerge(t *testing.T) {
	t.Parallel()
	r := rand.New(rand.NewPCG(1, 2))
	var all []float64
	a, b := &Histogram{}, &Histogram{}
	for range 20000 {
		v := math.Exp(r.NormFloat64()) * 20 // log-normal around 20 ms
		all = append(all, v)
		a.Add(v, 1)
	}
	for range 2000 {
		v := 400 + r.Float64()*600 // a slow node
		all = append(all, v)
		b.Add(v, 1)
	}
	a.Finish()
	b.Finish()
	sort.Float64s(all)
	exact := func(q float64) float64 { return all[int(q*float64(len(all)-1))] }

	for _, q := range []float64{0.5, 0.95, 0.99} {
		got, n := MergedQuantile(q, []*Histogram{a, b})
		require.Equal(t, float64(len(all)), n)
		require.InEpsilon(t, exact(q), got, 0.02, "q%.2f", q)

		m := &Histogram{}
		m.Merge(a)
		m.Merge(b)
		require.InEpsilon(t, exact(q), m.Quantile(q), 0.02, "merged q%.2f", q)
	}
	// The average of the nodes' p95s is 18 % off the true p95; the merge is within 2 %.
	avg := (a.Quantile(0.95) + b.Quantile(0.95)) / 2
	require.Greater(t, math.Abs(avg-exact(0.95))/exact(0.95), 0.1)

	// The wire form round-trips.
	raw, err := json.Marshal(a)
	require.NoError(t, err)
	var back Histogram
	require.NoError(t, json.Unmarshal(raw, &back))
	f, p := back.validate()
	require.Empty(t, p, f)
	require.Equal(t, a.Quantile(0.95), back.Quantile(0.95))
	require.Less(t, len(a.Bins), 700, "1 %% accuracy over five decades stays small")
}

func TestHistogramEdges(t *testing.T) {
	t.Parallel()
	v, n := MergedQuantile(0.95, nil)
	require.Zero(t, v)
	require.Zero(t, n)
	h := &Histogram{}
	h.Add(0, 5)
	h.Add(-1, 1)
	h.Add(math.NaN(), 1)
	h.Add(10, 0)
	require.Equal(t, 6.0, h.Count())
	require.Zero(t, h.Quantile(0.99))
	h.Add(100, 100)
	require.InEpsilon(t, 100, h.Quantile(0.99), 0.01)
	// Another accuracy is re-binned on merge.
	coarse := &Histogram{RelativeAccuracy: 0.05}
	coarse.Add(200, 100)
	coarse.Finish()
	h.Finish()
	got, _ := MergedQuantile(0.99, []*Histogram{h, coarse})
	require.InEpsilon(t, 200, got, 0.06)
}

// The cached total of a finished or decoded histogram is dropped by Add
// and Merge, so MergedQuantile's count is always the true count.
func TestMergedQuantileCountFollowsChanges(t *testing.T) {
	h := &Histogram{}
	h.Add(10, 5)
	h.Finish()
	_, n := MergedQuantile(0.5, []*Histogram{h})
	require.Equal(t, 5.0, n)
	h.Add(20, 3)
	h.Finish()
	h.Merge(func() *Histogram { o := &Histogram{}; o.Add(30, 2); o.Finish(); return o }())
	h.Finish()
	_, n = MergedQuantile(0.5, []*Histogram{h})
	require.Equal(t, 10.0, n)
	require.Equal(t, h.Count(), n)

	b, err := Encode(&Metrics{Node: "n", App: "web", WindowStart: time.Unix(1, 0), Window: 1, LatencyHistogram: h})
	require.NoError(t, err)
	m, err := DecodeAs[*Metrics](b)
	require.NoError(t, err)
	_, n = MergedQuantile(0.5, []*Histogram{m.LatencyHistogram, h})
	require.Equal(t, 20.0, n, "decoded and local histograms together")
}

// The fast path reads the same quantile as summing every bin, for every q
// and every mix of histograms, zero buckets included.
func TestTailQuantileMatchesFullMerge(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	fast, all := 0, 0
	defer func() {
		t.Logf("fast path taken %d of %d times", fast, all)
		require.Greater(t, fast, all*3/4, "the fast path is what is tested")
	}()
	for trial := range 3000 {
		var hs []*Histogram
		for range 1 + rng.IntN(6) {
			h := &Histogram{}
			base := math.Exp(rng.Float64() * 8)
			for range rng.IntN(40) {
				h.Add(base*math.Exp(rng.NormFloat64()), float64(1+rng.IntN(5)))
			}
			if rng.IntN(5) == 0 {
				h.Add(0, float64(1+rng.IntN(3)))
			}
			h.Finish()
			hs = append(hs, h)
		}
		if rng.IntN(10) == 0 {
			hs = append(hs, nil)
		}
		for _, q := range []float64{0, 0.01, 0.25, 0.5, 0.9, 0.95, 0.99, 1, rng.Float64()} {
			want, wantN := fullQuantile(q, hs)
			got, gotN := MergedQuantile(q, hs)
			if _, _, ok := tailQuantile(q, hs); ok {
				fast++
			}
			all++
			require.Equal(t, wantN, gotN, "trial %d q %v", trial, q)
			require.Equal(t, want, got, "trial %d q %v", trial, q)
		}
	}
}
