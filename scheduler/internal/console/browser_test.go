package console

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/require"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/internal/testrig"
)

// TestLiveRefreshInTheBrowser goes from page to page in Chromium more
// times than a browser opens connections to a host (six): the pages left
// must hold no live stream (a page kept in the back/forward cache with
// its stream open would hold a connection, and after five the next
// refresh waits for one). Then an event refreshes the page in place,
// without loading it again.
func TestLiveRefreshInTheBrowser(t *testing.T) {
	r := newRig(t, nil)
	r.apply("name: web\nimage: nginx:1\nport: 80\n")
	b := testrig.NewBrowser(t)
	ctx, cancel := context.WithTimeout(b.Ctx, 2*time.Minute)
	defer cancel()
	require.NoError(t, chromedp.Do(ctx, chromedp.Navigate(r.url+"/ui/login"), chromedp.SendKeys(chromedp.ID("token"), admin)))
	_, err := chromedp.RunResponse(ctx, chromedp.Click(chromedp.CSS("form.login button[type=submit]")))
	require.NoError(t, err)
	// A DOM query, not a script evaluated in the page: an evaluation can
	// be sent to the execution context of the document a navigation is
	// replacing ("Cannot find context with specified id", seen once in
	// CI), while a query follows the document that is there.
	for i := range 8 {
		require.NoError(t, chromedp.Do(ctx, chromedp.Navigate(r.url+"/ui/?visit="+strconv.Itoa(i))), "visit %d", i)
		wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
		_, err := chromedp.Run(wctx, chromedp.WaitReady(chromedp.CSS(`#live[data-state="live"]`)))
		wcancel()
		require.NoError(t, err, "visit %d: the page follows the live stream", i)
	}
	// The server sees a closed stream when its connection closes: soon,
	// not at once.
	require.Eventually(t, func() bool { return r.live.Clients() == 1 }, 3*time.Second, 10*time.Millisecond,
		"one page is open, but %d streams are: the pages left kept theirs", r.live.Clients())

	require.NoError(t, chromedp.Do(ctx, chromedp.Evaluate[chromedp.Void](`window.__marker = 1`)))
	r.live.Publish(&msg.Event{ID: "1", App: "web", Kind: msg.EventAppUpdated, Message: "updated", At: time.Now()})
	_, err = chromedp.Run(ctx, chromedp.Poll[chromedp.Void](`document.body.dataset.refreshed !== undefined`, chromedp.WithPollingTimeout(10*time.Second)))
	require.NoError(t, err, "the event refreshes the page")
	marker, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`window.__marker === 1`))
	require.NoError(t, err)
	require.True(t, marker, "refreshed in place, not loaded again")
	b.RequireNoProblems()
}
