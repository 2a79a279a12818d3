import pytest

from edge_detect.decision import Decision


def test_threshold_and_normalised_score():
    d = Decision(threshold=0.5, center=0.1)
    v = d.update(0.5, now=0.0)
    assert v.normalised == pytest.approx(1.0)
    assert not v.anomalous and not v.alert  # equal to the threshold is not above it
    v = d.update(0.1, now=1.0)
    assert v.normalised == pytest.approx(0.0)
    v = d.update(0.9, now=2.0)
    assert v.anomalous and v.alert and v.normalised == pytest.approx(2.0)


def test_debounce_n_of_m():
    d = Decision(threshold=1.0, debounce_n=2, debounce_m=3)
    alerts = [d.update(s, now=i).alert for i, s in enumerate([2, 0, 0, 2, 0, 2, 2])]
    # the 2nd hit within a window of 3 alerts (index 5: hits at 3 and 5); a lone hit never does
    assert alerts == [False, False, False, False, False, True, True]


def test_cooldown_suppresses_repeats():
    d = Decision(threshold=1.0, cooldown=10.0)
    times = [0.0, 1.0, 5.0, 9.9, 10.0, 12.0, 20.5]
    alerts = [d.update(5.0, now=t).alert for t in times]
    assert alerts == [True, False, False, False, True, False, True]


def test_one_defect_in_front_of_the_camera_gives_one_alert():
    d = Decision(threshold=1.0, debounce_n=3, debounce_m=5, cooldown=60.0)
    alerts = sum(d.update(3.0, now=i / 10).alert for i in range(30))
    assert alerts == 1


def test_bad_parameters():
    with pytest.raises(ValueError, match="n <= m"):
        Decision(1.0, debounce_n=3, debounce_m=2)
    with pytest.raises(ValueError, match="cooldown"):
        Decision(1.0, cooldown=-1)


def test_set_threshold_keeps_window():
    d = Decision(threshold=1.0, debounce_n=2, debounce_m=2)
    assert not d.update(1.5, 0).alert
    d.set_threshold(2.0, 0.0)
    assert not d.update(1.5, 1).alert  # now below the new threshold
    assert d.update(2.5, 2).alert is False  # window [1.5 > 2.0: no, 2.5: yes]: one hit of two
    assert d.update(2.5, 3).alert
