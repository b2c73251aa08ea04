// SPDX-License-Identifier: GPL-3.0-or-later
// sbsine: one voice, level * sin(2 pi f t) on both channels while a note is held,
// f = 440 * 2^((note - 69) / 12) (MIDI tuning, A4 = note 69 = 440 Hz). Last note wins.
// The sustain pedal (CC 64 >= 64) holds a released note until the pedal is lifted.
#include "DistrhoPlugin.hpp"
#include <cmath>

START_NAMESPACE_DISTRHO

class SbSine : public Plugin
{
public:
    SbSine() : Plugin(1, 0, 0) {}

protected:
    const char* getLabel() const override { return "sbsine"; }
    const char* getDescription() const override { return "stembridge test instrument: MIDI sine"; }
    const char* getMaker() const override { return "stembridge"; }
    const char* getLicense() const override { return "GPL-3.0-or-later"; }
    uint32_t getVersion() const override { return d_version(1, 0, 0); }
    int64_t getUniqueId() const override { return d_cconst('s', 'b', 'S', 'n'); }

    void initParameter(uint32_t, Parameter& p) override
    {
        p.hints = kParameterIsAutomatable;
        p.name = "Level";
        p.symbol = "level";
        p.ranges = ParameterRanges(0.5f, 0.0f, 1.0f);
    }

    float getParameterValue(uint32_t) const override { return fLevel; }
    void setParameterValue(uint32_t, float value) override { fLevel = value; }

    void activate() override
    {
        fNote = -1;
        fPhase = 0.0;
        fPedal = fReleased = false;
    }

    void run(const float**, float** outputs, uint32_t frames,
             const MidiEvent* events, uint32_t eventCount) override
    {
        uint32_t e = 0;
        const double sampleRate = getSampleRate();
        for (uint32_t i = 0; i < frames; ++i)
        {
            for (; e < eventCount && events[e].frame <= i; ++e)
                handle(events[e]);
            float y = 0.0f;
            if (fNote >= 0)
            {
                y = fLevel * static_cast<float>(std::sin(fPhase));
                fPhase += 2.0 * M_PI * 440.0 * std::pow(2.0, (fNote - 69) / 12.0) / sampleRate;
                if (fPhase > 2.0 * M_PI)
                    fPhase -= 2.0 * M_PI;
            }
            outputs[0][i] = outputs[1][i] = y;
        }
        for (; e < eventCount; ++e)
            handle(events[e]);
    }

private:
    void handle(const MidiEvent& ev)
    {
        if (ev.size < 3)
            return;
        const uint8_t status = ev.data[0] & 0xF0, note = ev.data[1], velocity = ev.data[2];
        if (status == 0x90 && velocity > 0)
        {
            if (fNote < 0)
                fPhase = 0.0;
            fNote = note;
            fReleased = false;
        }
        else if ((status == 0x80 || (status == 0x90 && velocity == 0)) && note == fNote)
        {
            if (fPedal)
                fReleased = true;
            else
                fNote = -1;
        }
        else if (status == 0xB0 && note == 64)
        {
            fPedal = velocity >= 64;
            if (!fPedal && fReleased)
            {
                fNote = -1;
                fReleased = false;
            }
        }
    }

    float fLevel = 0.5f;
    int fNote = -1;
    double fPhase = 0.0;
    bool fPedal = false, fReleased = false;
};

Plugin* createPlugin() { return new SbSine(); }

END_NAMESPACE_DISTRHO
