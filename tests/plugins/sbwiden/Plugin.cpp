// SPDX-License-Identifier: GPL-3.0-or-later
// sbwiden: one input copied to two outputs. pedalboard hosts only plugins whose main bus has as
// many inputs as outputs, so no channel arrangement can run it: the test of that error.
#include "DistrhoPlugin.hpp"

START_NAMESPACE_DISTRHO

class SbWiden : public Plugin
{
public:
    SbWiden() : Plugin(0, 0, 0) {}

protected:
    const char* getLabel() const override { return "sbwiden"; }
    const char* getDescription() const override { return "stembridge test effect: mono in, stereo out"; }
    const char* getMaker() const override { return "stembridge"; }
    const char* getLicense() const override { return "GPL-3.0-or-later"; }
    uint32_t getVersion() const override { return d_version(1, 0, 0); }
    int64_t getUniqueId() const override { return d_cconst('s', 'b', 'W', 'd'); }

    void initParameter(uint32_t, Parameter&) override {}

    void run(const float** inputs, float** outputs, uint32_t frames) override
    {
        for (uint32_t i = 0; i < frames; ++i)
            outputs[0][i] = outputs[1][i] = inputs[0][i];
    }
};

Plugin* createPlugin() { return new SbWiden(); }

END_NAMESPACE_DISTRHO
