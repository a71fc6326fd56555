package spec

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// Duration is a time.Duration written as a Go duration string ("5s", "1m30s").
type Duration time.Duration

// Std returns d as a time.Duration.
func (d Duration) Std() time.Duration { return time.Duration(d) }

// String returns d in Go duration syntax.
func (d Duration) String() string { return time.Duration(d).String() }

// ParseDuration parses a Go duration string and rejects negative values.
func ParseDuration(s string) (Duration, error) {
	v, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("%q is not a duration (use a number with a unit: 500ms, 5s, 2m, 1h)", s)
	}
	if v < 0 {
		return 0, fmt.Errorf("%q is negative", s)
	}
	return Duration(v), nil
}

// MarshalJSON writes d as a duration string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }

// UnmarshalJSON reads a duration string.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("must be a duration string such as \"5s\"")
	}
	v, err := ParseDuration(s)
	if err != nil {
		return err
	}
	*d = v
	return nil
}

// ByteSize is a size in bytes, written with an optional unit: k, m, g (or
// Ki, Mi, Gi, Ti) are powers of 1024 as in nginx and Docker; K, M, G, T are
// powers of 1000 as in Kubernetes; a bare number is bytes.
type ByteSize int64

var byteUnits = []struct {
	suffix string
	mult   int64
}{
	{"Ki", 1 << 10}, {"Mi", 1 << 20}, {"Gi", 1 << 30}, {"Ti", 1 << 40},
	{"k", 1 << 10}, {"m", 1 << 20}, {"g", 1 << 30},
	{"K", 1e3}, {"M", 1e6}, {"G", 1e9}, {"T", 1e12},
}

// ParseByteSize parses a size such as "256Mi", "1G", "1m" or "4096".
func ParseByteSize(s string) (ByteSize, error) {
	bad := fmt.Errorf("%q is not a size (use bytes, or a number with k, m, g, Ki, Mi, Gi, Ti, K, M, G or T)", s)
	num, mult := s, int64(1)
	for _, u := range byteUnits {
		if strings.HasSuffix(s, u.suffix) {
			num, mult = strings.TrimSuffix(s, u.suffix), u.mult
			break
		}
	}
	if num == "" || strings.ContainsAny(num, "+-eE") {
		return 0, bad
	}
	if !strings.Contains(num, ".") {
		n, err := strconv.ParseInt(num, 10, 64)
		if err != nil || n > math.MaxInt64/mult {
			return 0, bad
		}
		return ByteSize(n * mult), nil
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil || f*float64(mult) >= math.MaxInt64 {
		return 0, bad
	}
	return ByteSize(f * float64(mult)), nil
}

// String writes b with the largest binary unit that divides it exactly.
func (b ByteSize) String() string {
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"Ti", 1 << 40}, {"Gi", 1 << 30}, {"Mi", 1 << 20}, {"Ki", 1 << 10}} {
		if b != 0 && int64(b)%u.mult == 0 {
			return strconv.FormatInt(int64(b)/u.mult, 10) + u.suffix
		}
	}
	return strconv.FormatInt(int64(b), 10)
}

// MarshalJSON writes b as a size string.
func (b ByteSize) MarshalJSON() ([]byte, error) { return json.Marshal(b.String()) }

// UnmarshalJSON reads a size string or a plain number of bytes.
func (b *ByteSize) UnmarshalJSON(data []byte) error {
	var s string
	if err := json.Unmarshal(data, &s); err != nil {
		var n json.Number
		if err := json.Unmarshal(data, &n); err != nil {
			return errors.New("must be a size such as \"256Mi\" or a number of bytes")
		}
		s = n.String()
	}
	v, err := ParseByteSize(s)
	if err != nil {
		return err
	}
	*b = v
	return nil
}

// StatusRange is an inclusive range of HTTP status codes.
type StatusRange struct {
	Min, Max int
}

// StatusRanges is a list of HTTP status codes and ranges, written "200-399,404".
type StatusRanges []StatusRange

// ParseStatusRanges parses "200-399,404".
func ParseStatusRanges(s string) (StatusRanges, error) {
	bad := func(part string, why string) error {
		return fmt.Errorf("%q is not a status list: %s (use codes 100-599 and ranges, e.g. \"200-399,404\")", s, why)
	}
	if strings.TrimSpace(s) == "" {
		return nil, bad(s, "it is empty")
	}
	var out StatusRanges
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		lo, hi, isRange := strings.Cut(part, "-")
		a, errA := strconv.Atoi(lo)
		b := a
		var errB error
		if isRange {
			b, errB = strconv.Atoi(hi)
		}
		switch {
		case errA != nil || errB != nil:
			return nil, bad(part, fmt.Sprintf("%q is not a number or range", part))
		case a < 100 || b > 599:
			return nil, bad(part, fmt.Sprintf("%q is outside 100-599", part))
		case a > b:
			return nil, bad(part, fmt.Sprintf("%q runs backwards", part))
		}
		out = append(out, StatusRange{Min: a, Max: b})
	}
	return out, nil
}

// Contains reports whether code is in one of the ranges.
func (r StatusRanges) Contains(code int) bool {
	for _, x := range r {
		if code >= x.Min && code <= x.Max {
			return true
		}
	}
	return false
}

// String writes r as "200-399,404".
func (r StatusRanges) String() string {
	parts := make([]string, len(r))
	for i, x := range r {
		if x.Min == x.Max {
			parts[i] = strconv.Itoa(x.Min)
		} else {
			parts[i] = fmt.Sprintf("%d-%d", x.Min, x.Max)
		}
	}
	return strings.Join(parts, ",")
}

// MarshalJSON writes r as a string.
func (r StatusRanges) MarshalJSON() ([]byte, error) { return json.Marshal(r.String()) }

// UnmarshalJSON reads a status list string, or a single number.
func (r *StatusRanges) UnmarshalJSON(data []byte) error {
	var s string
	if err := json.Unmarshal(data, &s); err != nil {
		var n json.Number
		if err := json.Unmarshal(data, &n); err != nil {
			return errors.New("must be a status list such as \"200-399,404\"")
		}
		s = n.String()
	}
	v, err := ParseStatusRanges(s)
	if err != nil {
		return err
	}
	*r = v
	return nil
}
