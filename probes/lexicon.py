"""The built-in word-sense lexicon: ambiguous words, two senses each, and the cue words that label them.

An occurrence of a word is labelled with a sense when cue words of exactly that sense occur within
the configured window of words around it in the same document (see docs/probes.md). The cue lists
are written for general encyclopedic English (the ``wikipedia-vital-articles`` part of the default
corpus); they are deliberately short and specific, so that most labels are right and unlabelled
occurrences are dropped rather than guessed. ``exclude`` lists phrases whose occurrences are dropped
(a third sense, e.g. "West Bank"). ``how`` is labelled only by the word right after it, which a
causal model has not seen yet when it reads "how": its occurrences are never "resolved".
"""

from __future__ import annotations


def _w(text: str) -> list[str]:
    return text.split()


DEFAULT_LEXICON: dict[str, dict] = {
    "bank": {
        "senses": {
            "river": _w("river rivers riverbank shore shores stream streams lake lakes flood floods flooding erosion canal delta "
                        "tributary valley levee creek"),
            "finance": _w("money loan loans financial finance deposit deposits credit banking currency monetary investment "
                          "investments lending lend reserve bankers account accounts savings"),
        },
        "exclude": ["west bank"],
    },
    "bat": {
        "senses": {
            "animal": _w("wing wings cave caves echolocation mammal mammals nocturnal flying vampire insects roost species"),
            "sport": _w("cricket baseball ball batting batter batsman player players swing wicket runs pitcher innings"),
        },
    },
    "how": {
        "senses": {
            "degree": _w("much many long often far old large big high fast deep few"),
            "manner": _w("to the it they a an this that these those we he she people one do does did is are was were can could "
                         "should would"),
        },
        "window_before": 0,
        "window_after": 1,
    },
    "rock": {
        "senses": {
            "geology": _w("mineral minerals sediment sediments sedimentary igneous granite crust stone stones volcanic erosion "
                          "metamorphic magma lava layer layers basalt limestone sandstone geological geology"),
            "music": _w("music musical band bands album albums song songs guitar guitarist pop roll genre singer punk jazz blues "
                        "musician musicians metal psychedelic folk"),
        },
    },
    "plant": {
        "senses": {
            "botany": _w("leaf leaves flower flowers flowering species seed seeds grow grows growing photosynthesis root roots "
                         "crop crops tree trees herb herbs shrub shrubs genus botanical garden fruit fruits cultivated"),
            "industry": _w("power nuclear factory factories manufacturing facility facilities industrial electricity chemical "
                           "steel assembly treatment reactor reactors generating coal"),
        },
    },
    "cell": {
        "senses": {
            "biology": _w("membrane membranes protein proteins dna rna organism organisms tissue tissues nucleus division "
                          "bacteria biology cellular molecules eukaryotic prokaryotic organelles cytoplasm mitochondria"),
            "device": _w("solar fuel battery batteries voltage electrochemical prison prisoner phone electrode electrodes "
                         "photovoltaic electrolyte"),
        },
    },
    "capital": {
        "senses": {
            "city": _w("city cities largest country located population seat town province metropolis"),
            "economics": _w("investment investments money assets goods labor labour market markets financial profit profits "
                            "wealth accumulation economic economy economics"),
        },
        "exclude": ["capital punishment"],
    },
    "star": {
        "senses": {
            "astronomy": _w("sun galaxy galaxies planet planets luminous telescope constellation stellar fusion astronomers orbit "
                            "universe brightest supernova"),
            "fame": _w("film films actor actress movie movies hollywood role roles career singer celebrity television"),
        },
    },
    "current": {
        "senses": {
            "electric": _w("electric electrical voltage circuit circuits ampere amperes magnetic conductor charge charges "
                           "resistance electrons"),
            "ocean": _w("ocean oceans sea seas gulf tide tides tidal coastal atlantic pacific"),
        },
    },
}
