// SPDX-License-Identifier: GPL-3.0-or-later
// sbgain: out = (1 - mix) * dry + mix * gain * dry, gain = 10^(gain_db / 20).
// pedalboard names the parameters gain_db (name "Gain", unit "dB") and mix.
#include "DistrhoPlugin.hpp"
#include <cmath>

START_NAMESPACE_DISTRHO

class SbGain : public Plugin
{
public:
    SbGain() : Plugin(kParamCount, 0, 0) {}

protected:
    enum { kGain, kMix, kParamCount };

    const char* getLabel() const override { return "sbgain"; }
    const char* getDescription() const override { return "stembridge test effect: gain and dry/wet mix"; }
    const char* getMaker() const override { return "stembridge"; }
    const char* getLicense() const override { return "GPL-3.0-or-later"; }
    uint32_t getVersion() const override { return d_version(1, 0, 0); }
    int64_t getUniqueId() const override { return d_cconst('s', 'b', 'G', 'n'); }

    void initParameter(uint32_t index, Parameter& p) override
    {
        p.hints = kParameterIsAutomatable;
        if (index == kGain)
        {
            p.name = "Gain";
            p.symbol = "gain_db";
            p.unit = "dB";
            p.ranges = ParameterRanges(0.0f, -60.0f, 24.0f);
        }
        else
        {
            p.name = "Mix";
            p.symbol = "mix";
            p.ranges = ParameterRanges(1.0f, 0.0f, 1.0f);
        }
    }

    float getParameterValue(uint32_t index) const override { return index == kGain ? fGainDb : fMix; }

    void setParameterValue(uint32_t index, float value) override
    {
        if (index == kGain)
        {
            fGainDb = value;
            fGain = std::pow(10.0f, value / 20.0f);
        }
        else
        {
            fMix = value;
        }
    }

    void run(const float** inputs, float** outputs, uint32_t frames) override
    {
        const float wet = fMix * fGain, dry = 1.0f - fMix;
        for (uint32_t c = 0; c < 2; ++c)
            for (uint32_t i = 0; i < frames; ++i)
                outputs[c][i] = dry * inputs[c][i] + wet * inputs[c][i];
    }

private:
    float fGainDb = 0.0f, fGain = 1.0f, fMix = 1.0f;
};

Plugin* createPlugin() { return new SbGain(); }

END_NAMESPACE_DISTRHO
