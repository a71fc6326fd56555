package msg

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time          { return c.t }
func (c *fakeClock) advance(d time.Duration) { c.t = c.t.Add(d) }
func newFence(life time.Duration, max int) (*Fence, *fakeClock) {
	c := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	return &Fence{TombstoneLifetime: life, MaxTombstones: max, Now: c.now}, c
}

func TestFenceDelete(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		run  func(t *testing.T, f *Fence, c *fakeClock)
	}{
		{"a lower-term put after a delete is dropped", func(t *testing.T, f *Fence, c *fakeClock) {
			require.True(t, f.Accept("web.a", 4))
			f.Delete("web.a")
			require.False(t, f.Accept("web.a", 3), "a deposed leader cannot resurrect the key")
			require.True(t, f.Accept("web.a", 4), "the current term may put it again")
		}},
		{"the tombstone expires", func(t *testing.T, f *Fence, c *fakeClock) {
			require.True(t, f.Accept("web.a", 4))
			f.Delete("web.a")
			c.advance(time.Minute - time.Nanosecond)
			require.False(t, f.Accept("web.a", 1))
			c.advance(time.Nanosecond)
			require.True(t, f.Accept("web.a", 1), "the key is forgotten after its lifetime")
		}},
		{"a second delete does not extend the lifetime", func(t *testing.T, f *Fence, c *fakeClock) {
			require.True(t, f.Accept("web.a", 4))
			f.Delete("web.a")
			c.advance(30 * time.Second)
			f.Delete("web.a")
			c.advance(30 * time.Second)
			require.True(t, f.Accept("web.a", 1))
		}},
		{"a forged term blocks only until its delete's tombstone expires", func(t *testing.T, f *Fence, c *fakeClock) {
			require.True(t, f.Accept("web.a", 5))
			require.True(t, f.Accept("web.a", 1<<62), "the forged write")
			require.False(t, f.Accept("web.a", 5), "the real writer is fenced for now")
			f.Delete("web.a")
			require.False(t, f.Accept("web.a", 5))
			c.advance(time.Minute)
			require.True(t, f.Accept("web.a", 5), "the real writer is back")
			require.False(t, f.Accept("web.a", 4))
		}},
		{"reset forgets everything", func(t *testing.T, f *Fence, c *fakeClock) {
			require.True(t, f.Accept("web.a", 1<<62))
			require.True(t, f.Accept("web.b", 9))
			f.Delete("web.b")
			f.Reset()
			require.True(t, f.Accept("web.a", 5))
			require.True(t, f.Accept("web.b", 1))
		}},
		{"tombstones are capped, oldest first", func(t *testing.T, f *Fence, c *fakeClock) {
			for i := range 5 {
				key := fmt.Sprintf("web.k%d", i)
				require.True(t, f.Accept(key, 7))
				f.Delete(key)
				c.advance(time.Second)
			}
			_, tombs := f.Len()
			require.Equal(t, 3, tombs)
			require.True(t, f.Accept("web.k0", 1), "the oldest went first")
			require.True(t, f.Accept("web.k1", 1))
			require.False(t, f.Accept("web.k2", 1))
			require.False(t, f.Accept("web.k4", 1))
		}},
		{"deletes of unfenced keys cost nothing", func(t *testing.T, f *Fence, c *fakeClock) {
			require.True(t, f.Accept("web.a", 0))
			f.Delete("web.a")
			f.Delete("web.never")
			live, tombs := f.Len()
			require.Zero(t, live+tombs+len(f.tombs.queue)-f.tombs.head)
		}},
		{"churn keeps the queue bounded behind a live tombstone", func(t *testing.T, f *Fence, c *fakeClock) {
			require.True(t, f.Accept("web.old", 2))
			f.Delete("web.old") // stays at the front for its lifetime
			for range 10_000 {
				require.True(t, f.Accept("web.b", 2))
				f.Delete("web.b")
			}
			live, tombs := f.Len()
			queue := len(f.tombs.queue) - f.tombs.head
			require.Zero(t, live)
			require.Equal(t, 2, tombs)
			require.LessOrEqual(t, queue, 2*tombs+64+1)
			require.False(t, f.Accept("web.old", 1))
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f, c := newFence(time.Minute, 3)
			tt.run(t, f, c)
		})
	}
}
