package msg

import (
	"fmt"
	"math"
	"sort"
	"sync"
)

// HistogramAccuracy is the relative accuracy of every Histogram Berth
// publishes: a quantile read from it is within 1 % of the true value.
const HistogramAccuracy = 0.01

// maxHistogramBins bounds a histogram on the wire: at 1 % accuracy, 1 µs to
// 1 hour is about 1,100 bins.
const maxHistogramBins = 4096

// Histogram is a mergeable latency distribution in milliseconds: the
// logarithmic buckets of DDSketch. Bin i counts the values in
// (γ^(i-1), γ^i] with γ = (1+α)/(1-α), α the relative accuracy; Zero
// counts values ≤ 0. Two histograms of the same accuracy merge by adding
// counts bin by bin, so the views of several nginx nodes give one true
// quantile, which averaging their p95s would not.
type Histogram struct {
	// RelativeAccuracy is α (HistogramAccuracy for Berth's producers).
	RelativeAccuracy float64 `json:"relative_accuracy"`
	// Zero counts values ≤ 0.
	Zero float64 `json:"zero,omitempty"`
	// Bins are [index, count] pairs, sorted by index, counts > 0.
	Bins [][2]float64 `json:"bins"`

	idx map[int]float64 // bins by index while adding; nil when Bins is current
	// total is Zero plus every bin's count, when totalOK (set by Finish
	// and by the validation of a decoded histogram, cleared by Add and
	// Merge): MergedQuantile then need not sum the bins.
	total   float64
	totalOK bool
}

// setTotal caches the count of a finished histogram.
func (h *Histogram) setTotal() {
	h.total = h.Zero
	for _, b := range h.Bins {
		h.total += b[1]
	}
	h.totalOK = true
}

func (h *Histogram) gamma() float64 {
	a := h.RelativeAccuracy
	if a <= 0 || a >= 1 {
		a = HistogramAccuracy
	}
	return (1 + a) / (1 - a)
}

// index returns the bin of v > 0.
func (h *Histogram) index(v float64) int { return int(math.Ceil(math.Log(v) / math.Log(h.gamma()))) }

func (h *Histogram) unpack() {
	if h.idx != nil {
		return
	}
	h.idx = make(map[int]float64, len(h.Bins))
	for _, b := range h.Bins {
		h.idx[int(b[0])] += b[1]
	}
}

func (h *Histogram) pack() {
	if h.idx == nil {
		return
	}
	h.Bins = h.Bins[:0]
	for i, c := range h.idx {
		if c > 0 {
			h.Bins = append(h.Bins, [2]float64{float64(i), c})
		}
	}
	sort.Slice(h.Bins, func(a, b int) bool { return h.Bins[a][0] < h.Bins[b][0] })
	h.idx = nil
}

// Add counts n values of v milliseconds.
func (h *Histogram) Add(v, n float64) {
	h.totalOK = false
	if h.RelativeAccuracy == 0 {
		h.RelativeAccuracy = HistogramAccuracy
	}
	if n <= 0 || math.IsNaN(v) {
		return
	}
	if v <= 0 {
		h.Zero += n
		return
	}
	h.unpack()
	h.idx[h.index(v)] += n
}

// Merge adds o's counts (o may be nil; it must be finished: decoded, or
// Finish called). Bins of another accuracy are re-binned by their
// representative values.
func (h *Histogram) Merge(o *Histogram) {
	if o == nil {
		return
	}
	h.totalOK = false
	if h.RelativeAccuracy == 0 {
		h.RelativeAccuracy = o.RelativeAccuracy
	}
	h.Zero += o.Zero
	h.unpack()
	for _, b := range o.Bins {
		h.idx[h.rebin(o, int(b[0]))] += b[1]
	}
}

// value is bin i's representative value, within α of every value in it.
func (h *Histogram) value(i int) float64 {
	g := h.gamma()
	return 2 * math.Pow(g, float64(i)) / (g + 1)
}

// Count is the number of values.
func (h *Histogram) Count() float64 {
	if h == nil {
		return 0
	}
	h.pack()
	n := h.Zero
	for _, b := range h.Bins {
		n += b[1]
	}
	return n
}

// Quantile returns the q-quantile (0 ≤ q ≤ 1) in milliseconds, 0 when empty.
func (h *Histogram) Quantile(q float64) float64 {
	h.pack()
	v, _ := MergedQuantile(q, []*Histogram{h})
	return v
}

// Finish sorts the bins for the wire; call it before encoding.
func (h *Histogram) Finish() {
	if h.RelativeAccuracy == 0 {
		h.RelativeAccuracy = HistogramAccuracy
	}
	h.pack()
	if h.Bins == nil {
		h.Bins = [][2]float64{}
	}
	h.setTotal()
}

// validate checks a decoded histogram and returns the sub-field at fault
// and the problem, or two empty strings.
func (h *Histogram) validate() (field, problem string) {
	if h.RelativeAccuracy <= 0 || h.RelativeAccuracy >= 0.5 {
		return ".relative_accuracy", fmt.Sprintf("%v must be in (0, 0.5)", h.RelativeAccuracy)
	}
	if len(h.Bins) > maxHistogramBins {
		return ".bins", fmt.Sprintf("%d bins, at most %d", len(h.Bins), maxHistogramBins)
	}
	if h.Zero < 0 || math.IsNaN(h.Zero) || math.IsInf(h.Zero, 0) {
		return ".zero", "must be a finite count ≥ 0"
	}
	for i, b := range h.Bins {
		if b[0] != math.Trunc(b[0]) || math.Abs(b[0]) > 1e6 {
			return fmt.Sprintf(".bins[%d]", i), fmt.Sprintf("index %v must be an integer within ±1000000", b[0])
		}
		if b[1] <= 0 || math.IsNaN(b[1]) || math.IsInf(b[1], 0) {
			return fmt.Sprintf(".bins[%d]", i), fmt.Sprintf("count %v must be a finite count > 0", b[1])
		}
		if i > 0 && b[0] <= h.Bins[i-1][0] {
			return fmt.Sprintf(".bins[%d]", i), "indexes must be strictly increasing"
		}
	}
	h.setTotal()
	return "", ""
}

// MergedQuantile returns the q-quantile of the histograms merged, and
// their total count, without building the merged histogram. The histograms
// are only read, and must be finished (decoded, or Finish called); those of
// another accuracy than the first are re-binned.
//
// The merged quantile is never below the lowest of the histograms' own
// q-quantiles (below it, every histogram has at most its own rank of
// values, so the sum is at most the merged rank). So when every histogram
// has the same accuracy and a known total, only the bins from that bound
// up are summed — for a p95, each histogram's top few bins — and the sum
// is read from the top. Otherwise every bin is summed into a dense array
// over the index range (a few hundred entries at 1 % accuracy).
func MergedQuantile(q float64, hs []*Histogram) (value, count float64) {
	if v, n, ok := tailQuantile(q, hs); ok {
		return v, n
	}
	return fullQuantile(q, hs)
}

// tailQuantile is MergedQuantile's fast path; ok is false when it does not
// apply (mixed accuracies, a histogram being built, a quantile that may lie
// in the zero bucket).
func tailQuantile(q float64, hs []*Histogram) (value, count float64, ok bool) {
	var first *Histogram
	var zero float64
	cut, hi := math.MaxInt, math.MinInt
	for _, h := range hs {
		if h == nil {
			continue
		}
		if first == nil {
			first = h
		}
		if h.RelativeAccuracy != first.RelativeAccuracy || !h.totalOK || h.idx != nil {
			return 0, 0, false
		}
		count += h.total
		zero += h.Zero
		n := len(h.Bins)
		if n == 0 {
			if h.Zero > 0 {
				return 0, 0, false
			}
			continue
		}
		hi = max(hi, int(h.Bins[n-1][0]))
		// This histogram's own q-quantile bin, read from the top: the
		// first bin down at which the values above reach total − rank.
		want := h.total - q*(h.total-1)
		above, own := 0.0, math.MinInt
		for k := n - 1; k >= 0; k-- {
			if above += h.Bins[k][1]; above >= want {
				own = int(h.Bins[k][0])
				break
			}
		}
		if own == math.MinInt {
			return 0, 0, false // in the zero bucket
		}
		cut = min(cut, own)
	}
	if count == 0 {
		return 0, 0, true
	}
	if cut > hi {
		return 0, 0, false
	}
	n := hi - cut + 1
	dense, buf := denseArray(n)
	defer releaseDense(buf)
	for _, h := range hs {
		if h == nil {
			continue
		}
		for k := len(h.Bins) - 1; k >= 0 && int(h.Bins[k][0]) >= cut; k-- {
			dense[int(h.Bins[k][0])-cut] += h.Bins[k][1]
		}
	}
	want := count - q*(count-1)
	above := 0.0
	for i := n - 1; i >= 0; i-- {
		if above += dense[i]; above >= want {
			return first.value(cut + i), count, true
		}
	}
	return 0, 0, false
}

// fullQuantile sums every bin into a dense array over the index range and
// reads it from the bottom.
func fullQuantile(q float64, hs []*Histogram) (value, count float64) {
	var first *Histogram
	lo, hi := math.MaxInt, math.MinInt
	var zero float64
	for _, h := range hs {
		if h == nil {
			continue
		}
		if first == nil {
			first = h
		}
		zero += h.Zero
		if n := len(h.Bins); n > 0 && h.RelativeAccuracy == first.RelativeAccuracy {
			// Finished bins are sorted: the ends are the range.
			lo, hi = min(lo, int(h.Bins[0][0])), max(hi, int(h.Bins[n-1][0]))
			continue
		}
		for _, b := range h.Bins {
			i := first.rebin(h, int(b[0]))
			lo, hi = min(lo, i), max(hi, i)
		}
	}
	count = zero
	if lo > hi {
		return 0, count
	}
	dense, buf := denseArray(hi - lo + 1)
	defer releaseDense(buf)
	for _, h := range hs {
		if h == nil {
			continue
		}
		if h.RelativeAccuracy == first.RelativeAccuracy {
			for _, b := range h.Bins {
				dense[int(b[0])-lo] += b[1]
			}
			if h.totalOK && h.idx == nil {
				count += h.total - h.Zero
			} else {
				for _, b := range h.Bins {
					count += b[1]
				}
			}
			continue
		}
		for _, b := range h.Bins {
			dense[first.rebin(h, int(b[0]))-lo] += b[1]
			count += b[1]
		}
	}
	if count == 0 {
		return 0, 0
	}
	rank := q * (count - 1)
	if rank < zero {
		return 0, count
	}
	seen := zero
	for i, c := range dense {
		seen += c
		if seen > rank {
			return first.value(lo + i), count
		}
	}
	return first.value(hi), count
}

// denseSize bins at 1 % accuracy span 1 µs to 10 hours; MergedQuantile
// reuses arrays of it instead of zeroing one per call.
const denseSize = 1024

var densePool = sync.Pool{New: func() any { return new([denseSize]float64) }}

// denseArray returns n zeroed counts, from the pool when they fit (buf is
// then what to give back with releaseDense).
func denseArray(n int) (dense []float64, buf *[denseSize]float64) {
	if n > denseSize {
		return make([]float64, n), nil
	}
	buf = densePool.Get().(*[denseSize]float64)
	dense = buf[:n]
	clear(dense)
	return dense, buf
}

func releaseDense(buf *[denseSize]float64) {
	if buf != nil {
		densePool.Put(buf)
	}
}

// rebin maps bin i of o to h's bins.
func (h *Histogram) rebin(o *Histogram, i int) int {
	if o == h || o.RelativeAccuracy == h.RelativeAccuracy {
		return i
	}
	return h.index(o.value(i))
}
