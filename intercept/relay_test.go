package intercept

import (
	"testing"
	"time"

	"github.com/tcpshadow/tcpshadow/rewrite"
)

func TestRelaysOnlyRegisteredFlows(t *testing.T) {
	r := newRig(t, AgentConfig{}, ClientConfig{})
	r.connected()
	r.register(flow(1))
	mine := reply(t, 1, rewrite.FlagACK, 1000) // payload is not relayed: the client asks for no prefix
	r.src.Push(reply(t, 2, rewrite.FlagACK, 0), time.Now())
	r.src.Push(mine, time.Now())
	r.expectReply(mine)
	r.expectNoReply()
	r.waitFor("no-owner count", func() bool { return r.agent.Stats().NoOwner == 1 })

	r.client.Deregister(flow(1))
	r.waitFor("deregistration", func() bool { return r.agent.Stats().Flows == 0 })
	r.src.Push(mine, time.Now())
	r.expectNoReply()
}

// TestLoneReplyNotHeldForFlushDelay checks that the relay sends a batch
// as soon as the capture has nothing more queued: a reply at a low rate
// leaves at once instead of waiting for the flush deadline (here an hour)
// and a timer wake-up.
func TestLoneReplyNotHeldForFlushDelay(t *testing.T) {
	r := newRig(t, AgentConfig{FlushDelay: time.Hour}, ClientConfig{})
	r.connected()
	r.register(flow(1))
	for i := range 3 {
		mine := reply(t, 1, rewrite.FlagACK, 100*i)
		r.src.Push(mine, time.Now())
		r.expectReply(mine)
	}
}

func TestScenario1SynAckBeforeRegistrationIsParked(t *testing.T) {
	r := newRig(t, AgentConfig{}, ClientConfig{})
	r.connected()
	synack := reply(t, 3, rewrite.FlagSYN|rewrite.FlagACK, 0)
	r.src.Push(synack, time.Now())
	r.waitFor("parking", func() bool { return r.agent.Stats().Parked == 1 })
	r.client.Register(flow(3))
	r.expectReply(synack)
	if st := r.agent.Stats(); st.ParkedDelivered != 1 {
		t.Fatalf("parked delivered = %d", st.ParkedDelivered)
	}
}

func TestParkedReplyExpires(t *testing.T) {
	r := newRig(t, AgentConfig{ParkTime: 20 * time.Millisecond}, ClientConfig{})
	r.connected()
	r.src.Push(reply(t, 4, rewrite.FlagSYN|rewrite.FlagACK, 0), time.Now())
	r.waitFor("parking", func() bool { return r.agent.Stats().Parked == 1 })
	time.Sleep(50 * time.Millisecond)
	r.register(flow(4))
	r.expectNoReply()
	if st := r.agent.Stats(); st.ParkedExpired != 1 || st.ParkedDelivered != 0 {
		t.Fatalf("stale parked reply delivered: %+v", st)
	}
}
