// SPDX-License-Identifier: GPL-3.0-or-later
// sblatency: delays stereo audio by exactly kDelay samples and reports them as latency,
// like a look-ahead limiter would, so a host can compensate. No parameters.
#include "DistrhoPlugin.hpp"
#include <cstring>

START_NAMESPACE_DISTRHO

static constexpr uint32_t kDelay = 64;

class SbLatency : public Plugin
{
public:
    SbLatency() : Plugin(0, 0, 0) { setLatency(kDelay); }

protected:
    const char* getLabel() const override { return "sblatency"; }
    const char* getDescription() const override { return "stembridge test effect: 64-sample delay, reported as latency"; }
    const char* getMaker() const override { return "stembridge"; }
    const char* getLicense() const override { return "GPL-3.0-or-later"; }
    uint32_t getVersion() const override { return d_version(1, 0, 0); }
    int64_t getUniqueId() const override { return d_cconst('s', 'b', 'L', 't'); }

    void activate() override
    {
        std::memset(fRing, 0, sizeof(fRing));
        fPos = 0;
    }

    void run(const float** inputs, float** outputs, uint32_t frames) override
    {
        // A ring of kDelay samples per channel: read the oldest sample, then overwrite it.
        for (uint32_t i = 0; i < frames; ++i)
        {
            for (uint32_t c = 0; c < 2; ++c)
            {
                const float x = inputs[c][i];
                outputs[c][i] = fRing[c][fPos];
                fRing[c][fPos] = x;
            }
            fPos = (fPos + 1) % kDelay;
        }
    }

private:
    float fRing[2][kDelay] = {};
    uint32_t fPos = 0;
};

Plugin* createPlugin() { return new SbLatency(); }

END_NAMESPACE_DISTRHO
