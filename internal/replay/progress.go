package replay

import (
	"fmt"
	"strings"
	"time"
)

// Progress is a replay's state at one moment: the player's side and, set
// by whoever runs the engine, what reached the shadow.
type Progress struct {
	Elapsed   time.Duration // wall time since the timeline's origin
	FileAt    time.Duration // file time of the last packet handed over, in its pass
	FileLen   time.Duration // one pass's length in file time
	Pass      int           // 0-based
	Passes    int
	PassGap   time.Duration // wall time between passes, not played
	Speed     float64       // asked for
	Packets   uint64        // handed over
	Bytes     uint64
	Reordered uint64 // handed over at once: earlier than one before them
	NonIP     uint64 // records without an IP packet, skipped
	OtherHost uint64 // cooked frames to another host, skipped
	LateP50   time.Duration
	LateP99   time.Duration
	LateMax   time.Duration

	// The engine's side.
	Sessions  uint64 // started with a handshake, or joined mid-stream
	Joined    uint64 // of those, joined mid-stream
	Requests  uint64 // requests sent: as the comparison paired them, or paced (each connection's first aside) without it
	SentBytes uint64 // bytes sent to the shadow
	// PacingDrift is the mean of how much later than in the file, against
	// the previous request, each request reached the shadow.
	PacingDrift time.Duration
	Ignored     uint64 // packets the engine could not use (not TCP, no map, ...)
	Shed        uint64 // packets or sessions it shed (queues, budgets)
	// LastSent is when the last packet left for the shadow, from the
	// origin; 0 if none did.
	LastSent time.Duration
}

// Progress returns the player's counters.
func (p *Player) Progress() Progress {
	pr := Progress{
		FileAt: time.Duration(p.fileAt.Load()), FileLen: time.Duration(p.span),
		Pass: int(p.pass.Load()), Passes: p.cfg.Loop, PassGap: p.cfg.PassGap, Speed: p.cfg.Speed,
		Packets: p.packets.Load(), Bytes: p.bytes.Load(), Reordered: p.reordered.Load(),
		NonIP: p.nonIP.Load(), OtherHost: p.otherHost.Load(),
		LateP50: p.late.Quantile(0.5), LateP99: p.late.Quantile(0.99), LateMax: p.late.Max(),
	}
	if s := p.started.Load(); s != 0 {
		pr.Elapsed = max(p.clock.Now().Sub(time.Unix(0, s)), 0)
	}
	return pr
}

// Origin returns the wall time the timeline starts at; zero before Run.
func (p *Player) Origin() time.Time {
	s := p.started.Load()
	if s == 0 {
		return time.Time{}
	}
	return time.Unix(0, s)
}

// done is the share of the whole replay handed over, 0..1.
func (pr *Progress) done() float64 {
	if pr.Passes == 0 {
		return 0
	}
	if pr.FileLen <= 0 {
		return float64(pr.Pass) / float64(pr.Passes)
	}
	f := (float64(pr.Pass) + min(float64(pr.FileAt)/float64(pr.FileLen), 1)) / float64(pr.Passes)
	return min(max(f, 0), 1)
}

// wall is the wall time the replay took, gaps between passes left out:
// to the last packet sent to the shadow if one was (pacing may hold
// requests past their schedule), else to now.
func (pr *Progress) wall() time.Duration {
	wall := pr.Elapsed
	if pr.LastSent > 0 {
		wall = pr.LastSent
	}
	return max(wall-time.Duration(pr.Pass)*pr.PassGap, 0)
}

// Achieved is the speed achieved: the file time played over the wall
// time it took.
func (pr *Progress) Achieved() float64 {
	wall := pr.wall()
	played := float64(pr.Pass)*float64(pr.FileLen) + float64(pr.FileAt)
	if wall <= 0 || played <= 0 {
		return 0
	}
	return played / float64(wall)
}

const barWidth = 24

// Bar renders the progress as one terminal line (no newline), for a
// terminal: redraw it with a carriage return.
func (pr *Progress) Bar() string {
	f := pr.done()
	n := int(f * barWidth)
	bar := strings.Repeat("=", n)
	if n < barWidth {
		bar += ">" + strings.Repeat(" ", barWidth-n-1)
	}
	pass := ""
	if pr.Passes > 1 {
		pass = fmt.Sprintf(" pass %d/%d", pr.Pass+1, pr.Passes)
	}
	return fmt.Sprintf("[%s] %3.0f%%%s  file %s/%s  elapsed %s  sessions %d  requests %d  sent %s  late p99 %s",
		bar, f*100, pass, round(pr.FileAt), round(pr.FileLen), round(pr.Elapsed),
		pr.Sessions, pr.Requests, bytesStr(pr.SentBytes), round(pr.LateP99))
}

// Line renders the progress as a plain log line, for a pipe or a file.
func (pr *Progress) Line() string {
	return fmt.Sprintf("replay: %.0f%% pass %d/%d file %s/%s elapsed %s packets %d sessions %d requests %d sent %s late p50 %s p99 %s max %s",
		pr.done()*100, pr.Pass+1, pr.Passes, round(pr.FileAt), round(pr.FileLen), round(pr.Elapsed),
		pr.Packets, pr.Sessions, pr.Requests, bytesStr(pr.SentBytes), round(pr.LateP50), round(pr.LateP99), round(pr.LateMax))
}

// Summary renders the end of a replay: what was played and sent, the
// speed achieved against the one asked for, and the timing drift.
func (pr *Progress) Summary() string {
	var b strings.Builder
	fmt.Fprintf(&b, "replayed %d packets (%s) in %d pass(es): %d sessions (%d joined mid-stream), %d requests, %s sent to the shadow\n",
		pr.Packets, bytesStr(pr.Bytes), pr.Passes, pr.Sessions, pr.Joined, pr.Requests, bytesStr(pr.SentBytes))
	wall := pr.wall()
	fmt.Fprintf(&b, "speed: asked %gx, achieved %.2fx (file time %s in %s)\n",
		pr.Speed, pr.Achieved(), round(time.Duration(pr.Passes)*pr.FileLen), round(wall))
	fmt.Fprintf(&b, "drift: packets handed over late by p50 %s, p99 %s, max %s; requests reached the shadow %s later than in the file, on average\n",
		fine(pr.LateP50), fine(pr.LateP99), fine(pr.LateMax), fine(pr.PacingDrift))
	fmt.Fprintf(&b, "not used: %d records without IP, %d to other hosts, %d packets the engine ignored, %d shed; %d out of time order",
		pr.NonIP, pr.OtherHost, pr.Ignored, pr.Shed, pr.Reordered)
	return b.String()
}

func round(d time.Duration) time.Duration {
	switch {
	case d >= 10*time.Second:
		return d.Round(time.Second)
	case d >= time.Second:
		return d.Round(100 * time.Millisecond)
	case d >= time.Millisecond:
		return d.Round(100 * time.Microsecond)
	}
	return d.Round(time.Microsecond)
}

func fine(d time.Duration) time.Duration { return d.Round(time.Microsecond) }

func bytesStr(n uint64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

// Report is a replay's summary for machines (replay --json): durations
// in seconds.
type Report struct {
	Packets        uint64  `json:"packets"`
	Passes         int     `json:"passes"`
	Sessions       uint64  `json:"sessions"`
	Joined         uint64  `json:"sessions_joined"`
	Requests       uint64  `json:"requests"`
	SentBytes      uint64  `json:"bytes_sent"`
	SpeedAsked     float64 `json:"speed_asked"`
	SpeedAchieved  float64 `json:"speed_achieved"`
	FileSeconds    float64 `json:"file_seconds"`
	WallSeconds    float64 `json:"wall_seconds"`
	LateP50        float64 `json:"late_p50_seconds"`
	LateP99        float64 `json:"late_p99_seconds"`
	LateMax        float64 `json:"late_max_seconds"`
	PacingDrift    float64 `json:"pacing_drift_mean_seconds"`
	NonIP          uint64  `json:"records_not_ip"`
	OtherHost      uint64  `json:"records_other_host"`
	EngineIgnored  uint64  `json:"engine_ignored"`
	EngineShed     uint64  `json:"engine_shed"`
	OutOfTimeOrder uint64  `json:"out_of_time_order"`
}

// Report returns the summary's numbers.
func (pr *Progress) Report() Report {
	return Report{
		Packets: pr.Packets, Passes: pr.Passes, Sessions: pr.Sessions, Joined: pr.Joined,
		Requests: pr.Requests, SentBytes: pr.SentBytes, SpeedAsked: pr.Speed, SpeedAchieved: pr.Achieved(),
		FileSeconds: (time.Duration(pr.Passes) * pr.FileLen).Seconds(), WallSeconds: pr.wall().Seconds(),
		LateP50: pr.LateP50.Seconds(), LateP99: pr.LateP99.Seconds(), LateMax: pr.LateMax.Seconds(),
		PacingDrift: pr.PacingDrift.Seconds(), NonIP: pr.NonIP, OtherHost: pr.OtherHost,
		EngineIgnored: pr.Ignored, EngineShed: pr.Shed, OutOfTimeOrder: pr.Reordered,
	}
}
